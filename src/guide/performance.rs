//! # Performance
//!
//! What bounds each stage, the figures behind the design choices in the code, and the
//! benchmarks that print them. Every figure was measured on a 2-vCPU virtual machine
//! shared with other work (noisy: ±25%), in release builds; the benchmark itself prints
//! its figures as ratios against baselines measured in the same run.
//!
//! ## The benchmarks
//!
//! `cargo run --release --example bench` runs them all; `-- --quick`, `-- --ingest`,
//! `-- --delivery`, `-- --consume`, `-- --open`, `-- --concurrency`, `-- --capi` and (with
//! `--features redis,nats`) `-- --brokers` and (with `--features kafka`) `-- --kafka` run parts.
//! [Figures](#figures) below lists them, each with the command that printed it. The
//! load test is in [`testing`](super::testing).
//!
//! ## Callers and the writer
//!
//! - **Callers yield before they sleep** (`reply::caller_yields`): a commit takes tens
//!   of microseconds, and a caller still awake costs no wake-up, which on a VM is often
//!   an interrupt to a halted virtual CPU. With 0 / 30 / 100 / 300 yields under
//!   `Durability::Normal`: `append` from 1 thread 12.8k / 13.8k / 30.5k / 33.8k per
//!   second (bench `--quick`); from 64 threads 166k / 216k / 221k / - (median of 5
//!   runs); a consumer reading and acking each event 73-88 / 62-71 / 23-30 / - µs per
//!   event. Under `Durability::Full` a commit waits for an `fsync` (100-200 µs):
//!   yielding through it gained nothing (1 thread: ~2.8k-3.1k appends/s either way) and
//!   cost CPU (55% -> 70% of a core), so callers sleep at once. Sink workers do not
//!   yield either: their cursor waits got shorter but their requests slower.
//! - **Opening reads a few pages, whatever is stored**: the lowest and highest seq
//!   come from the primary key's two ends, in two statements (one statement asking
//!   for both made SQLite scan the table: 1.15 s warm for 10 M events).
//!
//! ## Delivery
//!
//! - **A reader thread per sink** reads ahead of the worker, so reading the next events
//!   overlaps the request in flight (reading 100 events back costs about half as much
//!   as posting them to a receiver on the same machine).
//! - **Reads of 100 rows** (`delivery::reader::READ_AHEAD`): draining in batches of
//!   100, reads of 512 on the reader thread slowed the requests beside them as much as
//!   they saved (317k-343k events/s; the same reads on the worker's thread:
//!   315k-334k); reads of 100 did not (439k-482k).
//! - **Delivered events are freed on the reader's thread**, which allocated them: 100
//!   events freed by the worker took it 20-51 µs between two requests.
//! - **Workers commit their cursor on the writer's connection** (`writer::Db`) under
//!   `Durability::Normal` instead of waking the writer: each wake-up costs tens of
//!   microseconds on a VM, as much as the commit. Under `Full` an acknowledgement that
//!   joins the writer's next transaction shares its `fsync`. A sink (one event per
//!   request) beside `append` callers, 5 s, 2 alternated runs: under `Full` with 1
//!   caller, through the writer 2.4k-2.8k appends/s and 1.5k-1.6k deliveries/s,
//!   directly 2.0k-2.3k and 1.0k; with 8 callers 17.4k and 1.5k-1.6k, directly
//!   14.2k-14.6k and 0.9k-1.2k. Under `Normal`, with 8 callers: through the writer
//!   51k-78k and 4.8k, directly 56k-82k and 5.5k-6.5k.
//! - **A cursor commit is one autocommit statement**: `BEGIN` and `COMMIT` around it
//!   cost 2-3 µs of the ~27 µs an acknowledgement took.
//! - **The WAL starts over while sinks acknowledge one event at a time**
//!   (`writer::db::ACK_CHECKPOINT`): the checkpointer's passes run beside a steady
//!   stream of acknowledgements and never end with all of it copied, so the WAL grew
//!   by a page per acknowledgement up to the writer's limit, each commit extending the
//!   file. Every 1024 acknowledgements the worker that commits the last one copies the
//!   WAL itself, holding the connection, when no event came in meanwhile: a
//!   single-event drain of 20 000 events, alternated runs, 19-20 µs per
//!   acknowledgement vs 23-24 µs, 7.9k-8.6k events/s vs 7.6k-8.0k; the WAL peaked at
//!   4.6-9 MB vs 89 MB. It costs that worker one pass per 1024 requests (1.4 ms at
//!   most in such runs).
//! - **`commit_every(n)`**: each cursor commit is a write to the spool file, tens of
//!   microseconds, most of a request to a receiver on the same machine; with `n = 8`
//!   one event per request ran at 0.95× / 0.99× of raw ureq (0.81× / 0.70× committing
//!   after each request), batches of 100 at 0.80× / 0.67× (0.45× / 0.58×), in two
//!   `-- --delivery` runs.
//! - **The webhook resolves hosts on the worker's thread**: ureq's own resolver, when
//!   a timeout covers resolution, starts a thread per request; in the bench the sink
//!   called directly ran at 0.65× raw ureq with it, 0.87-0.95× without.
//! - **Socket timeouts are set once per connection**: with only a whole-request
//!   deadline ureq set them before both writes and the read of every request (14 082
//!   `setsockopt` calls for 2 000 requests); each write and read now gets 99.9% of the
//!   timeout, a constant.
//!
//! ## Concurrent delivery
//!
//! - **One request in flight is one round trip per batch**: a receiver 20 ms away gets
//!   50 events a second from a sink posting one event per request, whatever the
//!   machine. With `Order::PerKey` or `Order::Unordered` and `Fixed(32)` requests in
//!   flight, a sink matches 32 raw ureq threads (`-- --concurrency`, in
//!   [Figures](#figures)).
//! - **Adaptive concurrency starts with a slow start**, doubling each round trip until the
//!   first back-pressure: the rule that only added one per round trip took 64 round
//!   trips to reach 64 in flight. After the first back-pressure it adds one every two
//!   round trips: adding one per round trip, a receiver serving 8 at a time refused 5%
//!   of the requests (the limit met its ceiling twice as often); one every two, under 2%
//!   in the simulation (`delivery::limit` tests).
//! - **`drain_to` commits on the writer's connection** under `Durability::Normal`, as
//!   sink workers do: one event at a time, the writer round trip per event held it at
//!   0.42× a raw per-event SELECT + DELETE; committing directly, and reading 256 rows a
//!   query, 1.44× (`-- --consume --quick`).
//!
//! ## Reads
//!
//! - **The derived event id is built without `format!`**, which took a quarter of the
//!   decoding of a row (1 150 of 4 700 instructions per 256-byte event, callgrind;
//!   ~500 now): reading 200k events through a subscription, alternated 5×, 1.28-1.44
//!   M/s -> 1.51-1.62 M/s.
//! - **Readers have the query planner stability guarantee on**: SQLite otherwise plans
//!   around the value bound to `LIMIT ?` and prepares the statement again at every
//!   read (reading 100 events at a time: 431 ns an event; 364 with it on).
//!
//! ## Figures
//!
//! `cargo run --release --example bench` (add `-- --quick` for a short run) prints every
//! figure next to baselines measured in the same run, with 256-byte JSON events. The
//! machine is a shared 2-core VM: absolute numbers swing by a third between runs, so read
//! the ratios; the raw baseline and `emit` alternate three times and the medians are shown.
//! One full run:
//!
//! | measure | events/s | vs raw baseline | vs naive |
//! |---|---:|---:|---:|
//! | raw rusqlite, 1000-row transactions (baseline, median of 3) | 429 309 | 1.00× | 7.7× |
//! | naive autocommit per event (second baseline) | 55 932 | 0.13× | 1.0× |
//! | `emit`, 1 thread, until `flush` returns (median of 3) | 519 467 | 1.21× | 9.3× |
//! | `append`, 1 thread (mean batch 1.0) | 17 836 | 0.04× | 0.3× |
//! | `append`, 8 threads (mean batch 6.9) | 99 899 | 0.23× | 1.8× |
//! | `append`, 64 threads (mean batch 38.9) | 165 792 | 0.39× | 3.0× |
//!
//! - `emit` latency on the caller's thread while the channel has room: p50 170 ns,
//!   p99 310 ns, p99.9 912 ns. `-- --ingest` prints only these figures.
//! - 5 000 000 events stored, in a process of their own: peak RSS (VmHWM) 53 MiB.
//!
//! Where `append` time goes: every call is a thread put to sleep and woken again once its
//! commit is done, and on this VM waking a thread costs about as much as the commit (often
//! an interrupt to a halted virtual CPU). So a caller first yields its CPU, up to 100
//! times, looking for its answer: a commit takes tens of microseconds, and a caller still
//! awake then needs no wake-up at all (under `Durability::Full` a commit waits for an
//! `fsync`, and the caller sleeps at once). And the writer does not wake a commit's callers
//! itself: it wakes two, and each caller that has its answer wakes two more. `flush` and a consumer's
//! `ack` wait the same way.
//!
//! | delivery to a local receiver (median of 3) | events/s | vs raw ureq | vs raw ureq + cursor |
//! |---|---:|---:|---:|
//! | raw ureq, one event per request (baseline) | 12 204 | 1.00× | – |
//! | raw ureq + a cursor committed after each request, one event per request | 9 547 | 0.78× | 1.00× |
//! | webhook sink called directly, one event per request | 12 434 | 1.02× | – |
//! | spool → webhook sink, one event per request | 9 389 | 0.77× | 0.98× |
//! | spool → webhook sink, one event per request, `commit_every(8)` | 11 241 | 0.92× | 1.18× |
//! | raw ureq, batches of 100 (baseline) | 968 217 | 1.00× | – |
//! | raw ureq + a cursor committed after each request, batches of 100 | 853 041 | 0.88× | 1.00× |
//! | webhook sink called directly, batches of 100 | 922 409 | 0.95× | – |
//! | spool → webhook sink, batches of 100 | 718 045 | 0.74× | 0.84× |
//! | spool → webhook sink, batches of 100, `commit_every(8)` | 633 859 | 0.65× | 0.74× |
//!
//! The receiver is the examples' (`examples/support/receiver.rs`: a thread per connection,
//! answering 204). The second baseline is the raw loop with what at-least-once delivery
//! needs at the least when the cursor lives in SQLite and a crash may replay only the
//! request in flight: after each request, a one-row `UPDATE` committed to a WAL file
//! (synchronous `NORMAL`, a checkpoint every 1024). End-to-end latency, `emit` to receipt
//! at 1 000 events/s, one event per request: p50 210 µs, p99 380 µs. `-- --delivery` prints only these figures.
//!
//! | delivery to a receiver 20 ms away, one event per request | events/s | vs raw | vs best fixed |
//! |---|---:|---:|---:|
//! | raw ureq, 32 threads (baseline) | 1 565 | 1.00× | – |
//! | `Order::Total`, one in flight (the default) | 49 | 0.031× | – |
//! | `Order::PerKey`, `Fixed(32)`, 1 024 keys | 1 567 | 1.00× | – |
//! | `Order::Unordered`, `Fixed(32)` | 1 565 | 1.00× | – |
//! | `Order::PerKey`, `Adaptive { max: 64 }` | 1 794 | 1.15× | 1.14× |
//!
//! `-- --concurrency` prints only these (6 400 events a row; the `Total` row 200). A
//! `--quick` run (1 600 a row): 1.02×, 1.00×, and `Adaptive` 1.63× the best fixed row.
//! The receiver answers each request after 20 ms on a thread of its own, so 32 in flight
//! take 32 / 20 ms = 1 600 a second: the spool keeps the receiver as busy as 32 raw
//! threads do, and adaptive concurrency goes past 32 while round trips stay flat.
//!
//! | one event at a time, 100 000 events (median of 3) | events/s | vs raw |
//! |---|---:|---:|
//! | raw SQLite: SELECT the oldest, DELETE it, per event (baseline) | 59 501 | 1.00× |
//! | `drain_to`, batch 1, cursor committed after each event | 82 555 | 1.39× |
//! | spool → webhook sink to a local receiver, one event per request, `Unordered`, `Fixed(8)` | 37 713 | 0.63× |
//!
//! Printed with the consuming figures (`-- --consume`). `drain_to` commits its cursor on
//! the writer's connection and reads 256 rows a query; before, a writer round trip per
//! event held it at 0.42× (`--quick`). A webhook posting one event per request with one
//! in flight is bound by the HTTP round trip (raw ureq alone: ~27 000 a second here), so
//! reaching this takes requests in flight (the webhook row above is 50 000 events).
//!
//! | opening a spool of 10 000 000 events (2 967 MB), warm (median of 5) | ms | vs raw |
//! |---|---:|---:|
//! | raw rusqlite: open, read max(seq) (baseline) | 0.48 | 1.00× |
//! | `Spool::open` | 2.75 | 5.76× |
//!
//! `-- --open` prints only these; a second run: 2.13 ms (4.92×). Before opening asked for
//! the lowest and highest seq in two statements, it read the whole table: 749 and 755 ms
//! in the same two runs, alternated (1 411× and 1 395× of the baseline).
//!
//! | consuming 1 000 000 stored events (median of 3) | events/s | vs raw |
//! |---|---:|---:|
//! | raw SQLite: read 1000 by seq, delete them (baseline) | 663 077 | 1.00× |
//! | subscription, ack every 1000 | 526 015 | 0.79× |
//!
//! `-- --consume` prints only these.
//!
//! Where delivery time goes: the bench prints, from each sink's `read_us`, `deliver_us` and
//! `commit_us` metrics, the time per request. In the run above, one event per request:
//! 1–2 µs reading, 85–103 µs in the sink (the raw loop: ~82 µs per request), 19–21 µs
//! committing the cursor; batches of 100: 92–155 µs reading, 99–151 µs in the sink
//! (encoding the body and posting it; raw: ~103 µs for a ready body), 21–26 µs committing
//! the cursor. Each sink reads on a thread of its own, one read ahead, so reading runs
//! beside the request in flight, and the delivered events go back to that thread to be
//! freed where they were allocated, not on the worker between two requests. The commit
//! cannot run beside the request: by default it must finish before the next request goes
//! out, because that is what limits a crash to replaying only the batch in flight. The
//! worker makes it itself, on the writer's connection (one SQLite statement; under
//! `Durability::Full` it joins the writer's transactions instead, to share their `fsync`).
//!
//! One event per request reaches 0.8× raw ureq with `commit_every(8)`, which commits the
//! cursor every 8 requests of a backlog (a crash may then replay up to 8): committing
//! after every request, the default, is bound by that commit (~20 µs here, a quarter of
//! a request to a receiver on the same machine). Batches of 100 stay below it: with the
//! receiver on the same two cores the work is CPU, and the reader (SQLite reading the
//! pages back, decoding each event, checking its data is JSON) is the slower stage.
//! Single-threaded `append` is bound by one commit per call; `emit` + `flush` or
//! concurrent callers avoid it.
//!
//! ### The C API
//!
//! `cargo run --release --example bench -- --capi` builds the C library
//! (`cargo rustc --release --features capi --crate-type cdylib,staticlib`) and
//! `examples/c/bench.c` (`cc -O2`), and alternates the C program with the same calls
//! from Rust; each row is the median of the pairs' ratios. 256-byte JSON bodies, made
//! before the clock starts; the C process runs the calls once untimed first, to warm its
//! heap as the Rust side's is by the rounds before.
//!
//! | 1 thread, Rust and C alternating | Rust events/s | C events/s | C / Rust |
//! |---|---:|---:|---:|
//! | `emit` until `flush`, 1 000 000 events (5 pairs) | 409 992 | 427 497 | 1.03× |
//! | `append`, 20 000 events (5 pairs) | 32 118 | 31 580 | 0.99× |
//! | `emit` calls only, 500 000 events, room in the channel (7 pairs) | 2 610 210 | 1 652 094 | 0.63× |
//! | the same, Rust borrowing the JSON as C hands it over (7 pairs) | 1 449 398 | | 0.99× |
//! | Python `Spool.emit` until `flush` (ctypes, `json.dumps` included), 100 000 | | 160 606 | 0.39× |
//!
//! Until `flush`, the writer bounds both. On the caller's thread alone, C pays for the
//! copy of its data (the spool keeps the event after `emit` returns, the caller keeps its
//! buffer): a Rust caller that moves a `String` it already has into the event skips it,
//! one that borrows its JSON pays the same and runs at the C rate. Earlier runs of the
//! same command, before the warm-up and the per-pair ratios: `emit` until `flush` 0.86×,
//! 0.75× and 1.22× (medians of 3), so single runs of these rows are noisy.
//!
//! The stripped `libeventspool.so` (x86-64, release): 5 403 KiB with the default
//! features, 3 804 KiB without `tls` (`--no-default-features --features capi`: no rustls,
//! no ring, plain `http://` webhooks only).
//!
//! ### The broker sinks
//!
//! `cargo run --release --example bench --features redis,nats -- --brokers` starts a
//! `redis-server` (append-only file, fsync always) and a `nats-server -js` (file
//! store), and alternates a raw client doing the same pipelined writes (100 per round
//! trip) with the sink delivering a backlog of 100 000 events of 256-byte JSON (timed
//! from opening the spool until all are delivered). Medians of 3, three runs:
//!
//! | backlog of 100 000 events, 100 per round trip | events/s | vs raw |
//! |---|---:|---:|
//! | raw redis crate, `XADD` pipelined (baseline) | 61 230 – 103 107 | 1.00× |
//! | `RedisSink` (one script per batch, ids from seq) | 51 541 – 57 412 | 0.56× – 0.88× |
//! | raw NATS client, JetStream publishes of the same event JSON, acks read (baseline) | 146 567 – 149 269 | 1.00× |
//! | `NatsSink` (`Nats-Msg-Id`, expected last id) | 80 121 – 83 410 | 0.54× – 0.56× |
//!
//! A later run added a second NATS baseline that sends `Nats-Msg-Id` on each message
//! (the machine busy with a CI run): raw 117 737/s, raw with ids 84 144/s (0.71×),
//! `NatsSink` 59 679/s (0.51× of raw, 0.71× of raw with ids); Redis 0.52× that run.
//! So JetStream's de-duplication, which exactly-once needs, takes about 30% of the
//! server's rate by itself. Under `perf`, a program draining 200 000 events through the
//! NATS sink alone spent half its samples in `nats-server` and under 15% on the sink's
//! thread. On an idle machine, the next run:
//! raw 147 400/s, raw with ids 107 342/s (0.73×), `NatsSink` 93 555/s (0.63× of raw,
//! 0.87× of raw with ids); the same run with the sink's `Nats-Msg-Id`-only messages (the
//! expected-last-id header taken out, to measure it): 0.64×, so that header costs
//! nothing measurable.
//!
//! The Redis baseline swings with the disk (every pipeline is an fsync). Committing the
//! sink's cursor after every round trip cost about a quarter of the Redis sink's rate
//! (`--quick`, one run each: 0.57× with a commit per batch, 0.74× every 8), which is
//! why the broker sinks commit every 8 (`DEFAULT_BROKER_COMMIT_EVERY`): what a crash
//! re-sends, the broker recognises. The NATS sink's gap to raw publishes is mostly
//! JetStream checking the de-duplication id it needs.
//!
//! Later (this table's Redis rows are superseded): the raw Redis baseline now writes
//! the same four fields as the sink (it wrote two), and the sink sends each batch as
//! one `MULTI`/`EXEC` transaction instead of a Lua script. Same run, the script: 0.62×
//! (raw 93 104/s, sink 57 611/s); the transaction, three runs: 1.17× (80 327 / 94 270),
//! 0.87× (91 824 / 79 444), 1.33× (43 662 / 57 863) — the raw rate still swings with
//! the disk. The transaction keeps what the script was for: Redis refuses a whole
//! transaction when memory is full or it is a read-only replica, so no later entry
//! lands ahead of a refused one. NATS in those runs: 0.58×, 0.63×, 0.45× of raw
//! publishes; 0.76×, 0.80×, 0.92× of raw publishes with `Nats-Msg-Id`.
//!
//! Later still, another design for NATS (this supersedes the NATS rows above). A
//! throwaway raw client (not kept), 100 000 messages of 400 bytes per variant, 100 per
//! write, alternating, medians of 5 rounds: plain publishes 189 k/s; with
//! `Nats-Msg-Id` 0.61×; `Nats-Msg-Id` plus `Nats-Expected-Last-Sequence` 0.62×;
//! `Nats-Expected-Last-Sequence` alone 0.76×; that with two writes unacknowledged at a
//! time 1.02×; `Nats-Msg-Id` plus the expected last id, two at a time, 0.65×. So no
//! sink that sends a de-duplication id could reach 0.8× of plain publishes, and a
//! header by itself costs a quarter unless the round trips overlap. The sink now
//! fences every publish with the stream's sequence (no de-duplication id: what the
//! stream holds is read when a connection starts, and a late or foreign message makes
//! the next publish refused, not doubled) and keeps two round trips in flight
//! (`in_flight`, each `deliver` carrying 8 round trips). `--brokers`, three runs:
//!
//! | backlog of 100 000 events, 100 per round trip | events/s | vs raw |
//! |---|---:|---:|
//! | raw NATS client, acks read before the next write (baseline) | 125 016 – 152 193 | 1.00× |
//! | raw, the same with `Nats-Msg-Id` | 108 956 – 129 156 | 0.77× – 1.03× |
//! | raw, two writes unacknowledged at a time | 170 446 – 183 460 | 1.16× – 1.47× |
//! | `NatsSink`, fenced, two round trips in flight | 108 247 – 138 058 | 0.86× – 0.91× |
//!
//! ### Encryption at rest
//!
//! `cargo run --release --example bench --features encryption -- --encryption`
//! alternates, three rounds, the same work on a plain spool and on an encrypted one (a
//! raw key): `emit` of 1 000 000 events of 256-byte JSON until `flush`, then a
//! subscription reading them all (the spool reopened, acking every 1 000). Medians of
//! 3, three runs of the final settings:
//!
//! | 1 000 000 events | plain events/s | encrypted events/s | encrypted vs plain |
//! |---|---:|---:|---:|
//! | `emit` until `flush` | 442 992 – 561 202 | 356 402 – 466 420 | 0.73× – 0.83× |
//! | consuming | 525 739 – 642 470 | 359 538 – 422 273 | 0.66× – 0.73× |
//!
//! With SQLCipher's defaults (4 KiB pages, HMAC-SHA512) the same run gave 0.53× and
//! 0.41×; `perf` put a fifth of all samples in `sha512_block_data_order_avx2` and 6%
//! in AES. HMAC-SHA256, which this machine's SHA extensions compute several times
//! faster, made it 0.64× and 0.47× (one run each); 16 KiB pages, which spread each
//! page's IV and HMAC over four times the rows, the figures above. The price of the
//! larger page: a commit that touches one page writes 16 KiB to the WAL, not 4 KiB
//! (not measured for small durable appends).
//!
//! ### The Kafka sink
//!
//! `cargo run --release --example bench --features kafka -- --kafka` starts
//! librdkafka's mock cluster (one broker, in the bench's process, so it shares the two
//! cores with everything else) and alternates, for 100 000 events of 256-byte JSON in
//! batches of 100: a raw idempotent producer sending 100 records then awaiting their
//! delivery reports; the same with the records the sink writes (`id`, `seq`, `type`
//! headers); the sink delivering a backlog (from opening the spool until all are
//! delivered); and a raw producer that sends everything before awaiting any report.
//! Medians of 3, three runs:
//!
//! | 100 000 events, 100 per batch | events/s | vs raw |
//! |---|---:|---:|
//! | raw idempotent producer, 100 records then their reports (baseline) | 375 404 – 415 325 | 1.00× |
//! | raw, the same records as the sink (`id`, `seq`, `type` headers) | 250 766 – 309 245 | 0.65× – 0.79× |
//! | `KafkaSink`, a backlog from open until delivered | 254 303 – 282 271 | 0.61× – 0.72× (0.91× – 1.07× of the same records) |
//! | raw, every record sent before any report is awaited | 841 564 – 1 075 170 | 2.23× – 2.73× |
//!
//! Three later runs, with the delivery reports through a channel bounded by the batch:
//! the sink at 0.58×, 0.82×, 0.59× of the headerless baseline and 0.85×, 0.83×, 0.89×
//! of the same records (one run with the unbounded channel between them: 0.72×, 0.96×;
//! the absolute rates 258 146/s unbounded against 251 638/s bounded, within the noise).
//!
//! The gap to the headerless baseline is librdkafka's per-header cost, not the sink:
//! against a producer writing the same records, the sink is as fast. Things measured
//! on the way: with librdkafka's default `linger.ms` of 5 every batch waited 5 ms
//! (18 335/s raw, the sink 0.97× of it), so the sink sets `linger.ms=0` (a batch is
//! sent whole and then awaited, so lingering gains nothing); committing the cursor
//! every batch or every 1 000 made no difference beyond the noise (0.51× and 0.65× in
//! one pair); a sink that does nothing, behind the same spool, took 837 201/s, so the
//! spool's own reading is about 1.2 µs per event.
//!
//! Later, another design (this supersedes the figures above). The sink keeps
//! `in_flight` batches of 100 awaiting their reports (the next produced while the
//! reports of the ones before come back; the idempotent producer keeps them in order),
//! and a `deliver` call carries four times that, so its pipeline drains once per call.
//! The bench now runs 300 000 events, five rounds, and starts each raw producer with
//! one acknowledged record before its clock (its producer id; the sink's time still
//! includes its own start, about 60 ms). What `in_flight` gave, the sink alone in the
//! same runs (100 000 events, calls of 8 and then 16 round trips): 1: 136 285 –
//! 177 882/s; 2: about 214 000/s; 4: 210 933 – 272 349/s; 8: 271 728 – 317 792/s;
//! 16: 227 620 – 341 860/s. With calls of 16 round trips and 8 in flight the drain at
//! each call's end still cost: 0.73×, 0.96×, 0.74× of the baseline; with calls of
//! `4 × in_flight` round trips, three runs:
//!
//! | 300 000 events, 100 per batch | events/s | vs raw |
//! |---|---:|---:|
//! | raw idempotent producer, 100 records then their reports (baseline) | 334 945 – 406 959 | 1.00× |
//! | raw, the same records as the sink (`id`, `seq`, `type` headers) | 262 421 – 306 797 | 0.75× – 0.78× |
//! | raw, the same records, 8 batches awaiting reports at a time | 297 249 – 394 910 | 0.84× – 1.08× |
//! | `KafkaSink`, 8 batches in flight, a backlog from open until delivered | 337 896 – 357 893 | 0.83× – 1.07× |
//! | raw, every record sent before any report is awaited | 832 277 – 996 326 | 2.22× – 2.74× |
