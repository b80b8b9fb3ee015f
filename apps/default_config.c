/* The embedded default run: `qft train` with no config. A tiny Llama (byte tokenizer,
 * about 0.9M parameters) learns the project's own generated grade-school math problems;
 * no download, a minute or less on two cores, loss printed as it falls. */
#include "cli.h"

const char qft_default_config[] =
    "train_type = \"full\";\n"
    "model: {\n"
    "  config = { hidden_size = 128; intermediate_size = 352; num_hidden_layers = 4;\n"
    "             num_attention_heads = 4; num_key_value_heads = 2;\n"
    "             max_position_embeddings = 512; tie_word_embeddings = true; };\n"
    "};\n"
    "tokenizer: { kind = \"byte\"; };\n"
    "data: { plugin = \"synth_math\"; count = 4000; context_length = 320; seed = 42; };\n"
    "train: { batch_size = 8; grad_accum = 2; max_steps = 80; optimizer = \"adamw\";\n"
    "         lr = 2e-3; weight_decay = 0.0; schedule = \"cosine\"; warmup = 0.1;\n"
    "         grad_clip = 1.0; seed = 42; log_every = 5; };\n"
    "output: { dir = \"runs/demo\"; save = \"model\"; save_dtype = \"f32\"; };\n";
