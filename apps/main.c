/* qft: the command. Subcommands dispatch to apps/cmd_*.c. */
#include "cli.h"
#include "qft_sdk.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "qft %s - finetune Llama-family models with quantized bases and adapters\n"
            "\n"
            "usage: qft <command> [options]\n"
            "  train [RUN.cfg] [--set section.key=value ...] [--plugin-path DIR ...]\n"
            "        train as the config says; without RUN.cfg, the embedded demo (a tiny\n"
            "        Llama on the project's own math problems, no download)\n"
            "  data [RUN.cfg] [--show N] [--set ...]   dataset counts and the first N\n"
            "        examples as tokenized, masked prompt apart from the trained part\n"
            "  quantize MODEL_DIR --method NAME -o OUT [--set quant.key=value ...]\n"
            "        write a pre-quantized model folder (the quantizer's own key names)\n"
            "  merge --base MODEL_DIR --adapter ADAPTER_DIR -o OUT [--dtype bf16|f32]\n"
            "        fold a PEFT-format LoRA/DoRA adapter into a dense model folder\n"
            "  expand MODEL_DIR -o OUT [--set adapter.expansion_rate=R | adapter.interval=K]\n"
            "        [--dtype bf16|f16|f32]   Llama-Pro block expansion into a new model folder\n"
            "  plugins [--plugin-path DIR ...]   list plugins: kind, name, version, file\n"
            "  tokenize --tokenizer DIR [--json] [--decode] [--no-special]\n"
            "        encode stdin lines to JSON id arrays (or decode them)\n"
            "  version\n",
            QFT_VERSION);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0) return qft_cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "merge") == 0) return qft_cmd_merge(argc - 2, argv + 2);
    if (strcmp(cmd, "expand") == 0) return qft_cmd_expand(argc - 2, argv + 2);
    if (strcmp(cmd, "quantize") == 0) return qft_cmd_quantize(argc - 2, argv + 2);
    if (strcmp(cmd, "data") == 0) return qft_cmd_data(argc - 2, argv + 2);
    if (strcmp(cmd, "plugins") == 0) return qft_cmd_plugins(argc - 2, argv + 2);
#ifdef QFT_HAVE_CMD_TOKENIZE
    if (strcmp(cmd, "tokenize") == 0) return qft_cmd_tokenize(argc - 2, argv + 2);
#endif
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("qft %s (plugin ABI %d)\n", QFT_VERSION, QFT_ABI_VERSION);
        return 0;
    }
    fprintf(stderr, "qft: unknown command \"%s\"\n\n", cmd);
    usage(stderr);
    return 2;
}
