/*
 * moba: the libmoba command line.
 *   moba demo    a synthetic needle-retrieval problem: MoBA vs full attention (sparsity, recall, error, time)
 *   moba attn    forward (and backward) on .npy files
 *   moba route   the selected blocks on .npy files
 *   moba bench   MoBA vs full attention timings over sequence lengths
 *   moba decode-bench   decode (KV cache) throughput: MoBA vs full attention over context lengths
 * Exit status: 0 success, 1 failure during a run, 2 bad flags / input files / output paths.
 */
#include "cli.h"
#include "device.h"
#include "opts.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"demo", cmd_demo, "synthetic long-context retrieval: MoBA vs full attention (no flags needed)"},
    {"attn", cmd_attn, "MoBA forward, and backward with --do, on .npy files"},
    {"route", cmd_route, "the router alone: selected block indices as int32 .npy"},
    {"bench", cmd_bench, "MoBA vs full attention times over sequence lengths (table, --json)"},
    {"decode-bench", cmd_decode_bench, "decode tokens/s over a KV cache: MoBA vs full attention (table, --json)"},
};
#define NUM_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage(FILE *f) {
    fprintf(f, "usage: moba COMMAND [flags]      (moba COMMAND --help for its flags)\n\n"
               "MoBA (Mixture of Block Attention) from the command line, libmoba %s.\n\ncommands:\n", moba_version());
    for (int i = 0; i < NUM_COMMANDS; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "  %-12s %s\n", "help", "moba help COMMAND: the same as moba COMMAND --help");
    fprintf(f, "\nflags:\n  -h, --help     this help\n  --version      the library version and its backends\n");
    fprintf(f, "\nexit status: 0 success; 2 bad flags, input files or output paths (nothing is written);\n"
               "             1 a failure during the run (library error, out of memory)\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
        usage(stdout);
        return EXIT_OK;
    }
    if (!strcmp(name, "--version")) {
        printf("libmoba %s\ncpu: yes\ncuda: %s\n", moba_version(),
               !cuda_built() ? "not built" : moba_backend_available(MOBA_BACKEND_CUDA) ? "yes" : "built, no usable device");
        return EXIT_OK;
    }
    if (!strcmp(name, "help")) {
        if (argc < 3) {
            usage(stdout);
            return EXIT_OK;
        }
        if (opts_print_help(stdout, argv[2])) return EXIT_OK;
        fprintf(stderr, "moba: unknown command '%.40s' (see moba --help)\n", argv[2]);
        return EXIT_USAGE;
    }
    for (int i = 0; i < NUM_COMMANDS; i++)
        if (!strcmp(name, commands[i].name)) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "moba: unknown command '%.40s' (see moba --help)\n", name);
    return EXIT_USAGE;
}
