/* Appends events until it is killed, printing each seq once `eventspool_append`
 * returned it (so every printed seq was acknowledged as committed). Run by
 * tests/capi.rs, which kills it with SIGKILL: crash_append PATH */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "eventspool.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: crash_append PATH\n");
        return 2;
    }
    eventspool_spool *spool = NULL;
    if (eventspool_open(argv[1], "{\"flush_interval_ms\": 0}", &spool) != EVENTSPOOL_OK) {
        char message[512];
        eventspool_last_error(message, sizeof message);
        fprintf(stderr, "open: %s\n", message);
        return 1;
    }
    for (unsigned long n = 0;; n++) {
        char data[64];
        int len = snprintf(data, sizeof data, "{\"n\":%lu}", n);
        uint64_t seq = 0;
        if (eventspool_append(spool, "crash.append", data, (size_t)len, NULL, NULL, &seq) !=
            EVENTSPOOL_OK) {
            char message[512];
            eventspool_last_error(message, sizeof message);
            fprintf(stderr, "append: %s\n", message);
            return 1;
        }
        printf("%llu\n", (unsigned long long)seq);
        fflush(stdout);
    }
}
