/* The spool from C: open with a webhook sink, emit, append, read as a consumer group,
 * close. Build the library, then this program (from the crate's root):
 *
 *   cargo rustc --release --lib --features capi --crate-type cdylib,staticlib
 *   cc -I src/capi examples/c/example.c target/release/libeventspool.a -lpthread -ldl -lm -o example
 *   ./example http://127.0.0.1:8080/webhook     # e.g. cargo run --example receiver
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eventspool.h"

/* Prints what failed, with the library's message, and stops. */
static void check(eventspool_status status, const char *what) {
    if (status != EVENTSPOOL_OK) {
        char message[512];
        eventspool_last_error(message, sizeof message);
        fprintf(stderr, "%s: %s: %s\n", what, eventspool_status_name(status), message);
        exit(1);
    }
}

int main(int argc, char **argv) {
    const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:8080/webhook";
    const char *path = argc > 2 ? argv[2] : "example-c.db";

    /* The same SpoolConfig JSON as in Rust: caps, durability and webhooks. */
    char config[1024];
    snprintf(config, sizeof config,
             "{\"max_bytes\": 67108864,"
             " \"sinks\": [{\"name\": \"orders-hook\", \"url\": \"%s\", \"batch\": 10}]}",
             url);
    eventspool_spool *spool = NULL;
    check(eventspool_open(path, config, &spool), "open");
    printf("eventspool %s, spool %s\n", eventspool_version(), path);

    /* A consumer group registered before the events, so they wait for it. */
    check(eventspool_seek(spool, "billing", EVENTSPOOL_LAST_ACKNOWLEDGED, 0, NULL), "seek");

    for (int i = 0; i < 10; i++) {
        char data[64];
        int n = snprintf(data, sizeof data, "{\"id\": %d}", i);
        /* Returns at once: committed by the writer thread, delivered by the sink's. */
        check(eventspool_emit(spool, "order.created", data, (size_t)n, "order/42", "example-c"),
              "emit");
    }
    const char *paid = "{\"id\": 42, \"total\": \"9.99\"}";
    uint64_t seq = 0;
    check(eventspool_append(spool, "order.paid", paid, strlen(paid), "order/42", NULL, &seq),
          "append");
    printf("order.paid committed as seq %llu\n", (unsigned long long)seq);

    eventspool_subscription *billing = NULL;
    check(eventspool_subscribe(spool, "billing", EVENTSPOOL_LAST_ACKNOWLEDGED, 0, &billing),
          "subscribe");
    uint64_t read = 0, at = 0;
    char *event = NULL;
    while (eventspool_subscription_next(billing, 100, &at, &event, NULL) == EVENTSPOOL_OK) {
        read++;
        eventspool_string_free(event);
        check(eventspool_subscription_ack(billing, at), "ack");
    }
    printf("billing read %llu events\n", (unsigned long long)read);
    eventspool_subscription_free(billing);

    /* close lets the webhook deliver what it can within the timeout; the rest waits
     * in the file for the next start. */
    check(eventspool_close(spool, 10000), "close");
    char *metrics = NULL;
    check(eventspool_metrics_json(spool, &metrics, NULL), "metrics");
    const char *delivered = strstr(metrics, "\"delivered\":");
    printf("orders-hook delivered %s events\n",
           delivered ? strtok((char *)delivered + 12, ",") : "no");
    eventspool_string_free(metrics);
    eventspool_free(spool);
    return 0;
}
