/* A shared object without the entry symbol. */
int qft_not_a_plugin_answer(void) { return 42; }
