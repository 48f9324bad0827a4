/* The main() of every fuzz target when it is not built for libFuzzer:
 * replays each file of the given directories (or the given files) once
 * through LLVMFuzzerTestOneInput, which CI does under ASan/UBSan. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    enum { REPLAY_MAX = 1 << 20 };
    uint8_t *buf = malloc(REPLAY_MAX);
    size_t n = buf ? fread(buf, 1, REPLAY_MAX, f) : 0;
    fclose(f);
    int rc = buf ? LLVMFuzzerTestOneInput(buf, n) : -1;
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    int count = 0;
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d) {
            if (replay(argv[a]) != 0) {
                fprintf(stderr, "cannot read %s\n", argv[a]);
                return 1;
            }
            count++;
            continue;
        }
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            if (replay(path) == 0)
                count++;
        }
        closedir(d);
    }
    printf("%s: replayed %d inputs\n", argv[0], count);
    return count > 0 ? 0 : 1;
}
