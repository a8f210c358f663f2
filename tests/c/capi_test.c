/* The C API from C: every part of it, the errors a caller can make, and a C sink.
 * Run by tests/capi.rs: capi_test DIR [CYCLES]. Prints one line per check; exits 1 at
 * the first that fails, naming it and the library's last error. */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eventspool.h"

static char message[1024];

static const char *last_error(void) {
    eventspool_last_error(message, sizeof message);
    return message;
}

#define CHECK(cond, what)                                                          \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "FAILED %s (line %d): last error: %s\n", what, __LINE__, \
                    last_error());                                                 \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#define OK(call) CHECK((call) == EVENTSPOOL_OK, #call)

/* The status and a piece of the message a failing call must give. */
static void expect_failure(eventspool_status got, eventspool_status want, const char *needle,
                           const char *what) {
    if (got != want) {
        fprintf(stderr, "FAILED %s: got %s, want %s (%s)\n", what, eventspool_status_name(got),
                eventspool_status_name(want), last_error());
        exit(1);
    }
    if (strstr(last_error(), needle) == NULL) {
        fprintf(stderr, "FAILED %s: message \"%s\" lacks \"%s\"\n", what, message, needle);
        exit(1);
    }
    printf("ok %s: %s: %s\n", what, eventspool_status_name(got), message);
}

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Polls `cond` until it holds, for at most 20 s. */
#define WAIT_UNTIL(cond, what)                                     \
    do {                                                           \
        uint64_t deadline_ = now_ms() + 20000;                     \
        while (!(cond)) {                                          \
            CHECK(now_ms() < deadline_, "timed out waiting: " what); \
            pause_ms(1);                                           \
        }                                                          \
    } while (0)

/* The seqs of a JSON array of events, in the order they appear. */
static size_t seqs_of(const char *json, uint64_t *seqs, size_t max) {
    size_t n = 0;
    for (const char *p = strstr(json, "\"seq\":"); p != NULL && n < max; p = strstr(p + 1, "\"seq\":"))
        seqs[n++] = strtoull(p + 6, NULL, 10);
    return n;
}

/* A sink that records what it gets; it asks for one retry first, to see redelivery. */
struct collector {
    atomic_ulong calls;
    atomic_ulong events;
    atomic_ulong next_seq; /* the seq it expects next (0: any), to check the order */
    atomic_int out_of_order;
};

static int collect(void *user_data, const char *events_json, size_t len) {
    struct collector *c = user_data;
    if (atomic_fetch_add(&c->calls, 1) == 0) {
        eventspool_delivery_error("not yet: the first call is refused for a retry");
        return 1; /* retry in 1 ms */
    }
    if (strlen(events_json) != len) atomic_store(&c->out_of_order, 1);
    uint64_t seqs[256];
    size_t n = seqs_of(events_json, seqs, 256);
    for (size_t i = 0; i < n; i++) {
        uint64_t want = atomic_load(&c->next_seq);
        if (want != 0 && seqs[i] != want) atomic_store(&c->out_of_order, 1);
        atomic_store(&c->next_seq, seqs[i] + 1);
    }
    atomic_fetch_add(&c->events, n);
    return EVENTSPOOL_DELIVERED;
}

static int refuse(void *user_data, const char *events_json, size_t len) {
    (void)events_json;
    (void)len;
    atomic_fetch_add((atomic_ulong *)user_data, 1);
    eventspool_delivery_error("poison refused by the C sink");
    return EVENTSPOOL_REFUSED;
}

/* Counts the failures the spool reports that no call returns: a dead letter's. */
static atomic_int dead_letter_reports;

static void on_error(void *user_data, eventspool_status status, const char *message) {
    (void)user_data;
    if (status == EVENTSPOOL_DELIVERY && strstr(message, "poison refused") != NULL)
        atomic_fetch_add(&dead_letter_reports, 1);
}

/* Keeps every event but those of type "debug", and those about "secret/..." subjects. */
static int keep(void *user_data, const char *event_type, const char *subject) {
    (void)user_data;
    if (strcmp(event_type, "debug") == 0) return 0;
    return subject == NULL || strncmp(subject, "secret/", 7) != 0;
}

static const char ORDER[] = "{\"id\":42,\"total\":\"9.99\"}";

/* One whole round: open, emit, append, query, subscribe, dead letters, close. */
static void round_trip(const char *path, int verbose) {
    struct collector collector = {0};
    atomic_ulong refused = 0;

    eventspool_builder *builder = NULL;
    OK(eventspool_builder_new(path, "{\"batch_size\": 64, \"flush_interval_ms\": 1}", &builder));
    OK(eventspool_builder_add_sink(builder, "c-sink", "{\"batch\": 50, \"backoff_min_ms\": 1}",
                                   collect, &collector));
    OK(eventspool_builder_add_sink(builder, "poison-sink",
                                   "{\"event_types\": [\"poison\"], \"max_retries\": 0}", refuse,
                                   &refused));
    atomic_store(&dead_letter_reports, 0);
    OK(eventspool_builder_on_error(builder, on_error, NULL));
    eventspool_spool *spool = NULL;
    OK(eventspool_builder_open(builder, &spool));
    eventspool_builder_free(builder);

    /* A second owner of the same file is refused. */
    eventspool_spool *second = NULL;
    eventspool_status locked = eventspool_open(path, NULL, &second);
    if (verbose) expect_failure(locked, EVENTSPOOL_LOCKED, "locked", "second open of the file");
    CHECK(locked == EVENTSPOOL_LOCKED && second == NULL, "second open refused");

    /* Consumers registered before the events, so the events wait for them: "keeper"
     * never acks (the test reads the file afterwards), "billing" reads below. */
    OK(eventspool_seek(spool, "keeper", EVENTSPOOL_LAST_ACKNOWLEDGED, 0, NULL));
    OK(eventspool_seek(spool, "billing", EVENTSPOOL_LAST_ACKNOWLEDGED, 0, NULL));
    uint64_t base = 0;
    OK(eventspool_last_seq(spool, &base));

    for (int i = 0; i < 1000; i++) {
        char data[64];
        int n = snprintf(data, sizeof data, "{\"n\":%d}", i);
        OK(eventspool_emit(spool, "order.created", data, (size_t)n, "order/42", NULL));
    }
    uint64_t seq = 0;
    OK(eventspool_append(spool, "order.paid", ORDER, strlen(ORDER), "order/42", "shop", &seq));
    CHECK(seq == base + 1001, "append returns the seq after the 1000 emitted");
    OK(eventspool_emit(spool, "poison", NULL, 0, NULL, NULL));
    OK(eventspool_flush(spool, 5000));
    uint64_t len = 0, last = 0;
    OK(eventspool_len(spool, &len));
    OK(eventspool_last_seq(spool, &last));
    CHECK(last == base + 1002, "last_seq counts every event");
    if (verbose) printf("ok committed: append gave seq %llu, last seq %llu\n",
                        (unsigned long long)seq, (unsigned long long)last);

    char *json = NULL;
    size_t json_len = 0;
    OK(eventspool_query(spool, "{\"event_types\": [\"order.paid\"], \"limit\": 10}", &json,
                        &json_len));
    CHECK(strstr(json, "\"total\":\"9.99\"") != NULL && strstr(json, "\"source\":\"shop\""),
          "the query finds the appended event");
    CHECK(strlen(json) == json_len, "the length given is the string's");
    eventspool_string_free(json);

    /* A consumer group reads everything, in order, and acks. */
    eventspool_subscription *sub = NULL;
    OK(eventspool_subscribe(spool, "billing", EVENTSPOOL_LAST_ACKNOWLEDGED, 0, &sub));
    uint64_t expect = base + 1, got_seq = 0;
    char *event = NULL;
    eventspool_status status;
    while ((status = eventspool_subscription_next(sub, 50, &got_seq, &event, NULL)) ==
           EVENTSPOOL_OK) {
        CHECK(got_seq == expect, "the subscription reads in seq order");
        expect++;
        eventspool_string_free(event);
        OK(eventspool_subscription_ack(sub, got_seq));
    }
    CHECK(status == EVENTSPOOL_TIMED_OUT && event == NULL, "next times out when all is read");
    CHECK(expect == base + 1003, "the subscription read every event");
    if (verbose) printf("ok subscription read %llu events\n", (unsigned long long)(expect - base - 1));
    eventspool_subscription *twice = NULL;
    status = eventspool_subscribe(spool, "billing", EVENTSPOOL_BEGINNING, 0, &twice);
    if (verbose) expect_failure(status, EVENTSPOOL_CONSUMER, "billing", "a second subscription");
    CHECK(status == EVENTSPOOL_CONSUMER, "one subscription per name");
    eventspool_subscription_free(sub);
    uint64_t at = 0;
    OK(eventspool_seek(spool, "billing", EVENTSPOOL_AFTER, base + 1000, &at));
    CHECK(at == base + 1000, "seek moves the consumer");
    OK(eventspool_ack(spool, "billing", base + 1002));

    /* The C sink gets every event once it took the retry; the poison one is refused. */
    WAIT_UNTIL(atomic_load(&collector.events) == 1002, "the C sink received every event");
    CHECK(!atomic_load(&collector.out_of_order), "the C sink received the events in seq order");
    if (verbose) printf("ok c-sink received %lu events in order in %lu calls\n",
                        atomic_load(&collector.events), atomic_load(&collector.calls));
    WAIT_UNTIL(atomic_load(&refused) >= 1, "the poison sink was called");
    char *letters = NULL;
    for (uint64_t deadline = now_ms() + 20000;; pause_ms(1)) {
        OK(eventspool_dead_letters(spool, "poison-sink", 10, &letters, NULL));
        if (strstr(letters, "poison refused by the C sink") != NULL) break;
        eventspool_string_free(letters);
        CHECK(now_ms() < deadline, "the dead letter carries the sink's message");
    }
    if (verbose) printf("ok dead letter: %s\n", letters);
    WAIT_UNTIL(atomic_load(&dead_letter_reports) >= 1, "the error hook heard of the dead letter");
    eventspool_string_free(letters);
    uint64_t requeued = 0;
    OK(eventspool_requeue_dead_letters(spool, "poison-sink", &requeued));
    CHECK(requeued >= 1, "requeue counts the dead letter");

    char *metrics = NULL;
    OK(eventspool_metrics_json(spool, &metrics, NULL));
    CHECK(strstr(metrics, "\"committed\":") != NULL && strstr(metrics, "\"c-sink\"") != NULL,
          "metrics as JSON");
    eventspool_string_free(metrics);
    OK(eventspool_metrics_prometheus(spool, &metrics, NULL));
    CHECK(strstr(metrics, "eventspool_committed_total") != NULL, "metrics as Prometheus text");
    eventspool_string_free(metrics);
    char *consumers = NULL;
    OK(eventspool_consumers(spool, &consumers, NULL));
    CHECK(strstr(consumers, "\"billing\"") != NULL, "consumers list the group");
    eventspool_string_free(consumers);

    OK(eventspool_close(spool, 5000));
    OK(eventspool_close(spool, 5000)); /* idempotent */
    status = eventspool_emit(spool, "late", "1", 1, NULL, NULL);
    if (verbose) expect_failure(status, EVENTSPOOL_CLOSED, "closed", "emit after close");
    CHECK(status == EVENTSPOOL_CLOSED, "emit after close");
    OK(eventspool_len(spool, &len)); /* queries work on a closed spool */
    eventspool_free(spool);
}

static void errors(const char *path) {
    eventspool_spool *spool = NULL;
    expect_failure(eventspool_emit(NULL, "t", "1", 1, NULL, NULL), EVENTSPOOL_INVALID_ARGUMENT,
                   "spool handle is NULL", "NULL handle");
    expect_failure(eventspool_open(path, "{\"batch_size\": ", &spool), EVENTSPOOL_INVALID_CONFIG,
                   "does not parse", "configuration that is not JSON");
    expect_failure(eventspool_open(path, "{\"batch_sise\": 10}", &spool),
                   EVENTSPOOL_INVALID_CONFIG, "batch_sise", "unknown configuration field");
    expect_failure(eventspool_open(path, "{\"max_events\": 0}", &spool), EVENTSPOOL_INVALID_CONFIG,
                   "max_events", "configuration out of range");
    expect_failure(eventspool_open(path, "{\"path\": \"elsewhere.db\"}", &spool),
                   EVENTSPOOL_INVALID_CONFIG, "two paths", "two different paths");
    expect_failure(eventspool_open(NULL, NULL, &spool), EVENTSPOOL_INVALID_CONFIG, "no path",
                   "no path at all");
    expect_failure(eventspool_open(path, NULL, NULL), EVENTSPOOL_INVALID_ARGUMENT, "out is NULL",
                   "NULL out-pointer");
    CHECK(spool == NULL, "no handle after a failed open");

    OK(eventspool_open(path, NULL, &spool));
    expect_failure(eventspool_emit(spool, "", "1", 1, NULL, NULL), EVENTSPOOL_INVALID_EVENT,
                   "event type must not be empty", "empty event type");
    expect_failure(eventspool_emit(spool, NULL, "1", 1, NULL, NULL), EVENTSPOOL_INVALID_ARGUMENT,
                   "event type is NULL", "NULL event type");
    expect_failure(eventspool_append(spool, "t", "{\"a\":", 5, NULL, NULL, NULL),
                   EVENTSPOOL_INVALID_EVENT, "not valid JSON", "data that is not JSON");
    expect_failure(eventspool_emit(spool, "t", "\xff\xfe", 2, NULL, NULL),
                   EVENTSPOOL_INVALID_ARGUMENT, "data is not valid UTF-8", "data not UTF-8");
    expect_failure(eventspool_emit(spool, "t", "1", 1, "\xc3\x28", NULL),
                   EVENTSPOOL_INVALID_ARGUMENT, "subject is not valid UTF-8", "subject not UTF-8");
    expect_failure(eventspool_emit(spool, "t", NULL, 3, NULL, NULL), EVENTSPOOL_INVALID_ARGUMENT,
                   "data is NULL with length 3", "NULL data with a length");
    /* A whole event as JSON keeps the caller's id and time. */
    const char *refund = "{\"type\":\"order.refunded\",\"data\":{\"id\":42},\"id\":\"refund-42\","
                         "\"timestamp_ms\":1700000000000}";
    uint64_t refund_seq = 0;
    OK(eventspool_append_event(spool, refund, strlen(refund), &refund_seq));
    char *found = NULL;
    OK(eventspool_query(spool, "{\"event_types\": [\"order.refunded\"]}", &found, NULL));
    CHECK(strstr(found, "\"id\":\"refund-42\"") && strstr(found, "1700000000000"),
          "append_event keeps the id and the time");
    eventspool_string_free(found);
    expect_failure(eventspool_emit_event(spool, "{\"data\":1}", 10), EVENTSPOOL_INVALID_EVENT,
                   "missing field `type`", "an event without a type");
    char *json = NULL;
    expect_failure(eventspool_query(spool, "{\"limit\": \"many\"}", &json, NULL),
                   EVENTSPOOL_INVALID_ARGUMENT, "invalid query", "query that does not parse");
    CHECK(json == NULL, "no string after a failed query");
    expect_failure(eventspool_seek(spool, "billing", 7, 0, NULL), EVENTSPOOL_INVALID_ARGUMENT,
                   "position 7", "seek position out of range");
    eventspool_subscription *sub = NULL;
    expect_failure(eventspool_subscription_next(sub, 0, NULL, &json, NULL),
                   EVENTSPOOL_INVALID_ARGUMENT, "subscription handle is NULL",
                   "NULL subscription");
    eventspool_builder *builder = NULL;
    OK(eventspool_builder_new(path, NULL, &builder));
    expect_failure(eventspool_builder_add_sink(builder, "s", NULL, NULL, NULL),
                   EVENTSPOOL_INVALID_ARGUMENT, "deliver callback is NULL", "NULL callback");
    expect_failure(eventspool_builder_add_sink(builder, "s", "{\"batch\": 0}", collect, NULL),
                   EVENTSPOOL_INVALID_CONFIG, "batch", "sink batch out of range");
    expect_failure(eventspool_builder_add_sink(builder, "s", "{\"colour\": 1}", collect, NULL),
                   EVENTSPOOL_INVALID_CONFIG, "colour", "unknown sink option");
    eventspool_builder_free(builder);

    /* A filter in C: dropped events are counted, and append says so. */
    char filtered_path[4096];
    snprintf(filtered_path, sizeof filtered_path, "%s.filtered", path);
    OK(eventspool_builder_new(filtered_path, NULL, &builder));
    OK(eventspool_builder_filter(builder, keep, NULL));
    eventspool_spool *filtered = NULL;
    OK(eventspool_builder_open(builder, &filtered));
    eventspool_builder_free(builder);
    OK(eventspool_emit(filtered, "debug", "1", 1, NULL, NULL));
    OK(eventspool_emit(filtered, "order.paid", "1", 1, "secret/1", NULL));
    expect_failure(eventspool_append(filtered, "debug", "1", 1, NULL, NULL, NULL),
                   EVENTSPOOL_FILTERED, "filter", "append of a filtered event");
    uint64_t kept_seq = 0;
    OK(eventspool_append(filtered, "order.paid", "1", 1, "order/1", NULL, &kept_seq));
    CHECK(kept_seq == 1, "only the kept event got a seq");
    char *counters = NULL;
    OK(eventspool_metrics_json(filtered, &counters, NULL));
    CHECK(strstr(counters, "\"filtered\":3") != NULL, "the filter's drops are counted");
    eventspool_string_free(counters);
    OK(eventspool_close(filtered, 5000));
    eventspool_free(filtered);

    /* The whole message's length, whatever the buffer. */
    eventspool_emit(spool, "", "1", 1, NULL, NULL);
    size_t whole = eventspool_last_error(NULL, 0);
    char tiny[8];
    size_t again = eventspool_last_error(tiny, sizeof tiny);
    CHECK(whole == again && whole > 7 && strlen(tiny) == 7, "last_error cuts and tells the length");
    CHECK(strcmp(eventspool_status_name(99), "EVENTSPOOL_UNKNOWN") == 0, "status_name of a stranger");
    printf("ok last_error: %zu bytes, cut to \"%s\"\n", whole, tiny);

    OK(eventspool_close(spool, 5000));
    eventspool_free(spool);
    eventspool_free(NULL);
    eventspool_subscription_free(NULL);
    eventspool_builder_free(NULL);
    eventspool_string_free(NULL);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: capi_test DIR [CYCLES]\n");
        return 2;
    }
    int cycles = argc > 2 ? atoi(argv[2]) : 1;
    char path[4096], errors_path[4096];
    snprintf(path, sizeof path, "%s/events.db", argv[1]);
    snprintf(errors_path, sizeof errors_path, "%s/errors.db", argv[1]);
    printf("ok version %s\n", eventspool_version());
    errors(errors_path);
    for (int i = 0; i < cycles; i++) round_trip(path, i == 0);
    printf("all ok: %d cycles\n", cycles);
    return 0;
}
