//! # Performance guide
//!
//! What bounds each stage, the figures behind the design choices in the code, and the
//! benchmarks that print them. Every figure was measured on a 2-vCPU virtual machine
//! shared with other work (noisy: ±25%), in release builds; the benchmark itself prints
//! its figures as ratios against baselines measured in the same run.
//!
//! ## The benchmarks
//!
//! `cargo run --release --example bench` runs them all; `-- --quick`, `-- --delivery`,
//! `-- --consume` and `-- --open` run parts. The README's Performance section lists the
//! figures of a full run. `cargo test --release --test load -- --seconds 60` is the load
//! test (8 producers into a capped spool, receivers that go down and come back).
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
//!   flight, a sink matches 32 raw ureq threads (`-- --concurrency`, figures in the
//!   README).
//! - **Adaptive concurrency starts slow-start**, doubling each round trip until the
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
