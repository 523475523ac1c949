/*
 * phalanx: the command. Subcommands:
 *   train          one training worker (runtime/)
 *   data prepare   text files -> token shards
 *   run            start N ranks with mpirun or srun and watch them (launcher/)
 *   ckpt           list, verify and inspect checkpoints (launcher/ckpt.c)
 *   drill          an elastic run with injected failures and a report
 *   probe          (internal) the elastic agent's probe of a host it wants back
 *   export, eval, sample   models as files for other programs, their loss, their text
 */
#include "ckpt.h"
#include "launcher.h"
#include "runtime.h"

#include <stdio.h>
#include <string.h>

#ifdef __SANITIZE_ADDRESS__
/* The sanitizer build's defaults, for ranks that mpirun starts on another
 * host: the remote shell passes no environment, so ASAN_OPTIONS set by
 * scripts/test never reaches them. Open MPI's own allocations are never freed
 * before exit, so leak checks would fail every rank; memory errors and
 * undefined behaviour still stop it. An environment that sets the options
 * wins over these. */
const char *__asan_default_options(void);
const char *__ubsan_default_options(void);

const char *__asan_default_options(void)
{
    return "detect_leaks=0:abort_on_error=1";
}

const char *__ubsan_default_options(void)
{
    return "print_stacktrace=1:halt_on_error=1";
}
#endif

static void usage(FILE *out)
{
    fputs("usage: phalanx COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  run            start N training ranks with mpirun or srun (see phalanx run --help)\n"
          "  drill          run with injected failures, recover, report (see phalanx drill --help)\n"
          "  train          train a model on this process (see phalanx train --help)\n"
          "  data prepare   turn text files into token shards (see phalanx data prepare --help)\n"
          "  ckpt           ls, verify or inspect checkpoints (see phalanx ckpt --help)\n"
          "  export         a checkpoint as Hugging Face safetensors or an llm.c model file\n"
          "  eval           a model's loss on token shards, as llm.c measures it\n"
          "  sample         text written by a model\n"
          "  help           this text\n",
          out);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *command = argv[1];
    if (strcmp(command, "train") == 0)
        return train_main(argc - 1, argv + 1);
    if (strcmp(command, "run") == 0)
        return run_main(argc - 1, argv + 1);
    if (strcmp(command, "drill") == 0)
        return drill_main(argc - 1, argv + 1);
    if (strcmp(command, "probe") == 0)
        return probe_main(argc - 1, argv + 1);
    if (strcmp(command, "data") == 0)
        return data_main(argc - 1, argv + 1);
    if (strcmp(command, "ckpt") == 0)
        return ckpt_main(argc - 1, argv + 1);
    if (strcmp(command, "export") == 0)
        return export_main(argc - 1, argv + 1);
    if (strcmp(command, "eval") == 0)
        return eval_main(argc - 1, argv + 1);
    if (strcmp(command, "sample") == 0)
        return sample_main(argc - 1, argv + 1);
    if (strcmp(command, "help") == 0 || strcmp(command, "--help") == 0 ||
        strcmp(command, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "phalanx: unknown command '%s'\n", command);
    usage(stderr);
    return 2;
}
