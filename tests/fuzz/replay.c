/*
 * replay: the main() of a harness in builds without libFuzzer (fuzz.h).
 * Arguments are input files or directories of them (not recursive; names
 * starting with '.' are skipped, so a .gitkeep can hold an empty folder).
 * Every input goes through LLVMFuzzerTestOneInput once, in name order; a
 * finding aborts with the input's name printed just before it, so the
 * test log says which file to look at.
 */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void replay_file(const char *path)
{
    size_t size;
    uint8_t *data = fuzz_read_file(path, &size);
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
    LLVMFuzzerTestOneInput(data, size);
    free(data);
}

static int visible(const struct dirent *e)
{
    return e->d_name[0] != '.';
}

/* Returns the number of inputs replayed. */
static int replay_directory(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, visible, alphasort);
    if (n < 0)
        fuzz_fail("cannot list %s", dir);
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        replay_file(path);
        free(names[i]);
    }
    free(names);
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s INPUT_OR_DIRECTORY...\n"
                        "replays fuzzing inputs through this harness (tests/fuzz/fuzz.h)\n",
                argv[0]);
        return 2;
    }
    int count = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0)
            fuzz_fail("%s: no such file or directory", argv[i]);
        if (S_ISDIR(st.st_mode)) {
            count += replay_directory(argv[i]);
        } else {
            replay_file(argv[i]);
            count++;
        }
    }
    printf("replayed %d input(s) without a finding\n", count);
    return 0;
}
