import ControlDatabase
import FerryProtocol
import FerryRuntime
import Foundation
import JobStore
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// A bounded pool of executors: claims admitted (RUNNING, unowned) jobs from the control
/// database, runs them, heartbeats them, and records how they end.
///
/// Any replica with a free executor may claim an admitted job of a kind it runs
/// (`FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's claims). A claimed job
/// carries this replica's name as its owner and a heartbeat renewed every
/// `heartbeatInterval`, on a connection of the pool's own so that no load on the shared pool
/// can delay it; the leader fails jobs whose heartbeat stopped. The heartbeat also reads
/// cancel requests, so CancelJob works even without notifications.
public final class ExecutorPool: Service, Sendable {
    public struct Configuration: Sendable {
        /// Jobs this replica runs at once (default 4, docs/jobs.md).
        public var executors: Int = 4
        public var heartbeatInterval: Duration = .seconds(2)
        /// How often to look for admitted jobs without a notification.
        public var pollInterval: Duration = .milliseconds(1000)
        /// How often progress reaches the database at most (the latest figures win).
        public var progressInterval: Duration = .milliseconds(250)
        /// A job whose ownership the database has not confirmed for this long is stopped
        /// here, recording nothing: by then the leader may have failed it and a rerun may be
        /// writing the same tenant. It is measured from when the last confirmed heartbeat was
        /// *sent*; keep it at least two heartbeat intervals below the leader's timeout. (The
        /// fence at the target instance is what guarantees a single writer; this stops a cut
        /// off job early and keeps it from recording anything.)
        public var fenceAfter: Duration = .seconds(11)
        /// How long a stopped job's code may take to return before its end is recorded
        /// anyway and its slot freed (a statement stuck on a dead connection must not hold
        /// an executor, the tenant and shutdown forever).
        public var stopGrace: Duration = .seconds(10)
        /// How long a job has, once its replica begins to shut down, to stop at its last
        /// checkpoint, end its sessions and be released for another replica to continue.
        /// A job that cannot is recorded FAILED (UNAVAILABLE, retryable), as a job stopped
        /// for any other reason. The job is heartbeated meanwhile, so this may exceed the
        /// leader's heartbeat timeout.
        public var handoverTimeout: Duration = .seconds(10)
        public init() {}
    }

    final class RunningJob: Sendable {
        let id: UUID
        let attempt: Int32
        /// The kind's label in metrics (`clone`, `instance_replace`, …).
        let kind: String
        /// Rows and bytes already counted in the copy counters (progress only grows within an attempt).
        let counted = Mutex<(rows: Int64, bytes: Int64)>((0, 0))
        let task: Mutex<Task<Void, any Error>?> = Mutex(nil)
        let signal: StopSignal
        let sessions: Mutex<InstanceSessions?> = Mutex(nil)
        /// Ends the progress flusher between writes (a write is never cut off midway).
        let runnerDone = Mutex(false)
        /// The version of the counters last written.
        let written = Mutex<UInt64>(0)
        /// Rung by every change of the counters and at the end.
        let reported = Wakeup()
        /// Rung only at the end: cuts the flusher's rate-limiting pause short.
        let finished = Wakeup()
        /// When the last heartbeat that the database confirmed was sent.
        let confirmed = Mutex(ContinuousClock.now)
        let counters: Mutex<ProgressCounters?> = Mutex(nil)
        let result = ResultBox()

        init(id: UUID, attempt: Int32, kind: String, logger: Logger) {
            self.id = id
            self.attempt = attempt
            self.kind = kind
            signal = StopSignal()
            signal.onStop { [weak self] why in
                guard let self else { return }
                self.task.withLock { $0 }?.cancel()
                // Statements in flight on the instances stop there too, within seconds.
                if let sessions = self.sessions.withLock({ $0 }) {
                    Task { await sessions.stop() }
                }
                logger.info("stopping the job", metadata: ["job_id": "\(id.uuidString.lowercased())", "attempt": "\(attempt)", "reason": "\(why)"])
            }
        }

        func stop(_ why: StopReason) { signal.stop(why) }
        var reason: StopReason? { signal.reason }
    }

    public let replica: String
    private let client: PostgresClient
    private let heartbeatURL: DatabaseURL
    private let kinds: RegisteredKinds
    private let configuration: Configuration
    private let logger: Logger
    private let wakeup = Wakeup()
    private let running = Mutex<[UUID: RunningJob]>([:])
    private let claiming = Atomic<Bool>(true)
    private let onFinished: @Sendable () async -> Void

    /// - Parameters:
    ///   - heartbeatURL: the control database, for the heartbeat's own connection.
    ///   - onFinished: called after a job of this replica ended (capacity freed).
    public init(
        replica: String, client: PostgresClient, heartbeatURL: DatabaseURL, kinds: RegisteredKinds, configuration: Configuration,
        logger: Logger, onFinished: @escaping @Sendable () async -> Void
    ) {
        self.replica = replica
        self.client = client
        self.heartbeatURL = heartbeatURL
        self.kinds = kinds
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "executors"
        self.logger = logger
        self.onFinished = onFinished
    }

    /// Look for admitted jobs now (a notification said one is waiting).
    public func wake() { wakeup.signal() }

    /// Stops claiming new jobs for good: shutdown has begun. The server calls it as soon as
    /// a shutdown signal arrives, while the RPC layer still drains, so no job is claimed only
    /// to be stopped a moment later.
    public func stopClaiming() {
        claiming.store(false, ordering: .relaxed)
        wakeup.signal()
    }

    /// Shutdown has begun: stops claiming, and stops every running job so that it is handed
    /// over to another replica as soon as it has stopped, while the RPC layer still drains.
    public func handOver() {
        stopClaiming()
        for job in running.withLock({ Array($0.values) }) { job.stop(.shuttingDown) }
    }

    /// Stops a job this replica runs (CancelJob's notification); ignored for other jobs.
    public func cancel(_ id: UUID) {
        running.withLock { $0[id] }?.stop(.cancelled)
    }

    public var runningJobIDs: [UUID] { running.withLock { Array($0.keys) } }

    public func run() async throws {
        EngineMetrics.slots.record(configuration.executors)
        EngineMetrics.busy.record(0)
        await withDiscardingTaskGroup { group in
            group.addTask { await self.heartbeatLoop() }
            group.addTask { await self.fenceLoop() }
            // Claim while not shutting down; a graceful shutdown stops claiming and stops the
            // running jobs, which are handed over (or, failing that, end FAILED, retryable).
            await withGracefulShutdownHandler {
                // After stopClaiming() the loop idles until this service's own shutdown: a
                // service that ends before its turn would end the whole group.
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    if self.claiming.load(ordering: .relaxed), self.running.withLock({ $0.count }) < self.configuration.executors,
                       let record = await self.claim() {
                        // Registered before the task starts: it counts against the pool, gets
                        // heartbeats and hears cancel and shutdown from this moment on.
                        let job = RunningJob(id: record.id, attempt: record.attempt, kind: record.kind.name.lowercased(), logger: self.logger)
                        let busy = self.running.withLock { running in
                            running[record.id] = job
                            return running.count
                        }
                        EngineMetrics.busy.record(busy)
                        if Task.isShuttingDownGracefully || !self.claiming.load(ordering: .relaxed) { job.stop(.shuttingDown) }
                        group.addTask { await self.execute(record, as: job) }
                        continue
                    }
                    await self.wakeup.wait(upTo: self.configuration.pollInterval)
                }
            } onGracefulShutdown: {
                self.handOver()
            }
            // The jobs end on their own; the heartbeat loop ends when none is left.
            while !running.withLock({ $0.isEmpty }) {
                try? await Task.sleep(for: .milliseconds(50))
            }
            group.cancelAll()
        }
    }

    // MARK: Claim and run

    private func claim() async -> JobRecord? {
        do {
            return try await client.withConnection { connection in
                try await JobLifecycle.claim(replica: replica, kinds: kinds.kinds, on: connection, logger: logger)
            }
        } catch {
            logger.warning("cannot claim jobs", metadata: ["error": "\(String(reflecting: error))"])
            return nil
        }
    }

    private func execute(_ record: JobRecord, as job: RunningJob) async {
        let id = record.id
        let jobLogger = {
            var logger = self.logger
            logger[metadataKey: "job_id"] = "\(id.uuidString.lowercased())"
            logger[metadataKey: "attempt"] = "\(record.attempt)"
            return logger
        }()
        let started = ContinuousClock.now
        defer {
            let busy = running.withLock { running in
                running[id] = nil
                return running.count
            }
            EngineMetrics.busy.record(busy)
        }
        jobLogger.info("job started", metadata: ["kind": "\(record.kind.name)"])

        let outcome: (status: JobStatus, error: JobError?)
        if let runner = kinds.runner(for: record.kind) {
            guard let resumeState = await readResumeState(id, logger: jobLogger) else {
                // Running without it would redo work the lineage finished: fail, retryably.
                await recordOutcome((.failed, JobError(code: StatusCode.unavailable.rawValue, message: "cannot read the job's resume state; rerun to resume", retryable: true)), for: id, logger: jobLogger)
                await onFinished()
                return
            }
            let resources = kinds.resources
            let lost: @Sendable () -> Void = { job.stop(.lostOwnership) }
            let sessions = InstanceSessions(
                tag: SessionTag(root: record.rootJobID, attempt: record.attempt), jobID: id, owner: replica, directory: resources.instances,
                controlDatabase: client, settings: resources.settings, logger: jobLogger, onLost: lost)
            job.sessions.withLock { $0 = sessions }
            let counters = ProgressCounters { job.reported.signal() }
            counters.setCurrent(record.progress.current)
            // A job handed over keeps counting rows and bytes where its last owner stopped
            // (a new job, rerun included, starts at zero): its watchers never see them go
            // back. Table and tenant counts are the kind's, from the checkpoints.
            counters.add(rows: record.progress.rowsCopied, bytes: record.progress.bytesCopied)
            job.counted.withLock { $0 = (record.progress.rowsCopied, record.progress.bytesCopied) }
            job.counters.withLock { $0 = counters }
            let context = JobContext(
                job: record.job, jobID: id, rootJobID: record.rootJobID, attempt: record.attempt,
                resumeState: resumeState, logger: jobLogger, instances: sessions,
                checkpoints: Checkpoints(client: client, jobID: id, rootJobID: record.rootJobID, owner: replica, logger: jobLogger, onLost: lost),
                progress: counters, stopSignal: job.signal, resultBox: job.result)
            let params = record.params
            let task = Task { try await runner.runBody(params, context) }
            job.task.withLock { $0 = task }
            // Stopped before the task existed: the stop signal found nothing to cancel then.
            if job.reason != nil {
                task.cancel()
                Task { await sessions.stop() }
            }
            let flusher = Task { await self.flushProgress(job, logger: jobLogger) }
            let ended = await Self.result(of: task, stopped: job, grace: { [configuration] reason in
                reason == .shuttingDown ? configuration.handoverTimeout : configuration.stopGrace
            }, logger: jobLogger)
            job.runnerDone.withLock { $0 = true }
            job.reported.signal()
            job.finished.signal()
            _ = await flusher.result
            await writeProgress(job, logger: jobLogger)
            await sessions.closeAll()
            if ended.reason == .shuttingDown, case .failure = ended.result {
                // A rolling restart: hand the job over rather than fail it, when it is safe.
                switch await handOver(job, returned: ended.returned, sessions: sessions, logger: jobLogger) {
                case .released:
                    EngineMetrics.handedOver(kind: job.kind)
                    await onFinished()
                    return
                case .cancelRequested:
                    outcome = (.cancelled, nil)
                case .notHandedOver(let why):
                    outcome = (.failed, JobError(code: StatusCode.unavailable.rawValue, message: "the replica running the job shut down and \(why); rerun to resume", retryable: true))
                }
            } else {
                outcome = Self.outcome(ended.result, reason: ended.reason)
            }
        } else {
            // Not claimed by this replica (it claims only kinds it runs); kept for safety.
            outcome = (.failed, JobError(code: StatusCode.unimplemented.rawValue, message: "job kind \(record.kind.name) is not available on replica \(replica)", retryable: true))
        }

        if job.reason == .lostOwnership {
            jobLogger.warning("job stopped: its ownership could not be confirmed (the leader may have failed it, or a later attempt took its target)")
        }
        // Recorded even after a lost ownership: the update is guarded by owner and status, so
        // it does nothing if the job really is someone else's, and a false alarm (a slow
        // heartbeat) still records how the job ended instead of leaving it to the leader.
        // A kind's result is kept with SUCCEEDED and FAILED (a failed instance_replace lists
        // each tenant's outcome); a cancelled job's is dropped.
        await recordOutcome(outcome, result: outcome.status == .cancelled ? nil : job.result.value.withLock { $0 }, for: id, logger: jobLogger)
        EngineMetrics.finished(kind: job.kind, status: outcome.status, after: ContinuousClock.now - started)
        // The slot is free: look for the next admitted job now, not at the next poll.
        wakeup.signal()
        await onFinished()
    }

    /// How a hand-over ended.
    enum HandOver: Sendable {
        case released
        case cancelRequested
        /// Not handed over, and why (completes "the replica running the job shut down and …").
        case notHandedOver(String)
    }

    /// Releases a job stopped by shutdown for another replica to continue, once it is safe:
    /// its code returned (so nothing of it runs on) and no session of its attempt is left on
    /// the instances (the next owner runs the same attempt, whose sessions its fence would
    /// not end). Retried while the control database is unreachable, within the hand-over
    /// timeout; a job that cannot be released is recorded FAILED by the caller.
    private func handOver(_ job: RunningJob, returned: Bool, sessions: InstanceSessions, logger: Logger) async -> HandOver {
        guard returned else {
            return .notHandedOver("the job did not stop within the hand-over timeout (\(configuration.handoverTimeout))")
        }
        // Bounded as a whole: an instance or a control database that stops answering must not
        // keep the job (heartbeated meanwhile) and the shutdown waiting.
        let limit = configuration.handoverTimeout
        return await Self.firstOf({ await self.release(job, sessions: sessions, logger: logger) }, {
            try? await Task.sleep(for: limit)
            return Task.isCancelled ? nil : .notHandedOver("the job could not be released within the hand-over timeout (\(limit))")
        })
    }

    private func release(_ job: RunningJob, sessions: InstanceSessions, logger: Logger) async -> HandOver {
        guard await sessions.confirmEnded() else {
            return .notHandedOver("the job's sessions on its instances could not be confirmed ended, so it was not handed over")
        }
        var attempt = 0
        while !Task.isCancelled {
            attempt += 1
            do {
                let outcome = try await client.withConnection { connection in
                    try await JobLifecycle.release(job.id, owner: replica, on: connection, logger: logger)
                }
                switch outcome {
                case .released:
                    logger.notice("job handed over: released for another replica to continue from its checkpoints")
                    return .released
                case .cancelRequested:
                    return .cancelRequested
                case .notOwned:
                    // Ended or taken elsewhere meanwhile; recording an end is guarded and does nothing.
                    return .notHandedOver("the job was no longer this replica's")
                }
            } catch {
                logger.warning("cannot release the job for hand-over; retrying", metadata: ["try": "\(attempt)", "error": "\(String(reflecting: error))"])
                try? await Task.sleep(for: .milliseconds(250 * min(attempt, 8)))
            }
        }
        return .notHandedOver("the control database could not be reached to hand the job over")
    }

    /// The lineage's resume state, retried a few times; nil if it cannot be read.
    private func readResumeState(_ id: UUID, logger: Logger) async -> JSONValue? {
        for attempt in 1...5 {
            do {
                return try await client.withConnection { try await JobStore.resumeState(id, on: $0, logger: logger) }
            } catch {
                logger.warning("cannot read the resume state; retrying", metadata: ["try": "\(attempt)", "error": "\(String(reflecting: error))"])
                try? await Task.sleep(for: .milliseconds(200 * attempt))
            }
        }
        return nil
    }

    /// How a job's code ended, as the executor saw it.
    struct Ending: Sendable {
        var result: Result<Void, any Error>
        /// False when the grace ran out first (the code may still be running).
        var returned: Bool
        /// Why the job had been stopped when its code ended (nil: it ended on its own).
        var reason: StopReason?
    }

    /// The run's result; once the job is stopped, waits at most `grace(reason)` more for its
    /// code. The reason is read as the code ends, so a job that failed on its own an instant
    /// before a shutdown is recorded as it failed, not handed over.
    static func result(
        of task: Task<Void, any Error>, stopped job: RunningJob, grace: @escaping @Sendable (StopReason) -> Duration, logger: Logger
    ) async -> Ending {
        let ending = await firstOf({
            let result = await task.result
            return Ending(result: result, returned: true, reason: job.reason)
        }, {
            var reason = job.reason
            while reason == nil {
                try? await Task.sleep(for: .milliseconds(100))
                if Task.isCancelled { return nil }
                reason = job.reason
            }
            try? await Task.sleep(for: reason.map(grace) ?? .zero)
            return Task.isCancelled ? nil : Ending(result: .failure(CancellationError()), returned: false, reason: reason)
        })
        if !ending.returned {
            logger.error("the job's code did not return within \(ending.reason.map(grace) ?? .zero) of being stopped; recording its end and freeing its executor")
        }
        return ending
    }

    /// The first of two concurrent works to give a value (a nil from `second` gives way to
    /// `first`); the other is cancelled and not waited for. Unstructured tasks raced through
    /// one continuation, since a task group would wait for both: code that never returns
    /// would hold the executor, and shutdown, for as long as it runs.
    static func firstOf<T: Sendable>(_ first: @escaping @Sendable () async -> T, _ second: @escaping @Sendable () async -> T?) async -> T {
        let race = Mutex(FirstOfRace<T>())
        let finish: @Sendable (T) -> Void = { value in
            race.withLock { race in
                guard !race.decided else { return }
                race.decided = true
                if let continuation = race.continuation { continuation.resume(returning: value) } else { race.early = value }
            }
        }
        let tasks = [
            Task { finish(await first()) },
            Task { if let value = await second() { finish(value) } },
        ]
        let value = await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            race.withLock { race in
                if let early = race.early { continuation.resume(returning: early) } else { race.continuation = continuation }
            }
        }
        for task in tasks { task.cancel() }
        return value
    }

    static func outcome(_ result: Result<Void, any Error>, reason: StopReason?) -> (status: JobStatus, error: JobError?) {
        switch (result, reason) {
        case (.success, _):
            return (.succeeded, nil)
        case (.failure(let failure as JobFailure), nil):
            return (.failed, failure.jobError)
        case (.failure, .cancelled?):
            return (.cancelled, nil)
        case (.failure, .lostOwnership?):
            return (.failed, JobError(code: StatusCode.unavailable.rawValue, message: "the job's ownership could not be confirmed, so its replica stopped it; rerun to resume", retryable: true))
        case (.failure, .shuttingDown?):
            return (.failed, JobError(code: StatusCode.unavailable.rawValue, message: "the replica running the job shut down; rerun to resume", retryable: true))
        case (.failure(let error), _):
            return (.failed, JobError(code: StatusCode.unknown.rawValue, message: "\(error)", retryable: true))
        }
    }

    /// Writes the terminal status, retrying while the database is unreachable: the job's
    /// outcome must not be lost to a blip (the leader would otherwise fail it later).
    private func recordOutcome(_ outcome: (status: JobStatus, error: JobError?), result: JobResult? = nil, for id: UUID, logger: Logger) async {
        for attempt in 1...20 {
            do {
                let record = try await client.withConnection { connection in
                    try await JobStore.finish(id, owner: replica, status: outcome.status, error: outcome.error, result: result, on: connection, logger: logger)
                }
                if record == nil {
                    logger.warning("job was already ended elsewhere; its outcome here is dropped", metadata: ["status": "\(outcome.status.name)"])
                } else {
                    logger.info("job ended", metadata: ["status": "\(outcome.status.name)", "error": "\(outcome.error?.message ?? "")"])
                }
                return
            } catch {
                logger.warning("cannot record the job's end; retrying", metadata: ["try": "\(attempt)", "error": "\(String(reflecting: error))"])
                try? await Task.sleep(for: .milliseconds(250 * attempt))
            }
        }
    }

    // MARK: Progress and heartbeats

    /// Writes progress as soon as the counters change, then at most once per
    /// `progressInterval` (the latest figures win), until the runner is done.
    private func flushProgress(_ job: RunningJob, logger: Logger) async {
        while !job.runnerDone.withLock({ $0 }) {
            await job.reported.wait(upTo: .seconds(60))
            if job.runnerDone.withLock({ $0 }) { return }
            await writeProgress(job, logger: logger)
            await job.finished.wait(upTo: configuration.progressInterval)
        }
    }

    /// Writes the counters' snapshot if it changed since the last write.
    private func writeProgress(_ job: RunningJob, logger: Logger) async {
        guard let counters = job.counters.withLock({ $0 }) else { return }
        let (progress, version) = counters.snapshot()
        guard version != job.written.withLock({ $0 }) else { return }
        do {
            let stillOurs = try await client.withConnection { connection in
                try await JobStore.recordProgress(job.id, owner: replica, progress: progress, on: connection, logger: logger)
            }
            if stillOurs {
                job.written.withLock { $0 = max($0, version) }
                EngineMetrics.copied(job, progress)
            } else {
                job.stop(.lostOwnership)
            }
        } catch {
            // Not written: the next change or the final write tries again.
            logger.debug("progress not written", metadata: ["error": "\(error)"])
        }
    }

    /// One statement per interval for all of this replica's jobs: renews their heartbeats,
    /// notices cancel requests, and notices jobs that are no longer ours. It runs on a
    /// connection of its own (reopened when it breaks), so a pool busy with watchers or
    /// handlers cannot delay it into a rescue.
    private func heartbeatLoop() async {
        var connection: PostgresConnection?
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.heartbeatInterval)
            // A stopped job is not renewed: if its code does not return, the leader ends it
            // (CANCELLED when a cancel was asked) instead of a heartbeat keeping it alive.
            // A job handing over is renewed until it is released: shutting down is no reason
            // for the leader to fail it meanwhile.
            let jobs = running.withLock { $0.filter { $0.value.reason == nil || $0.value.reason == .shuttingDown } }
            guard !jobs.isEmpty else { continue }
            // Ownership is confirmed as of when the statement was sent: the leader compares
            // the time the database stamps, which is no earlier than this.
            let sent = ContinuousClock.now
            do {
                if connection == nil || connection?.isClosed == true {
                    var url = heartbeatURL
                    url.applicationName = "ferryd heartbeat"
                    connection = try await url.connect(logger: logger)
                }
                guard let open = connection else { continue }
                let beats = try await JobLifecycle.heartbeat(Array(jobs.keys), replica: replica, on: open, logger: logger)
                var seen = Set<UUID>()
                for beat in beats {
                    seen.insert(beat.id)
                    jobs[beat.id]?.confirmed.withLock { $0 = max($0, sent) }
                    if beat.cancelRequested { jobs[beat.id]?.stop(.cancelled) }
                }
                for (id, job) in jobs where !seen.contains(id) {
                    // Ended meanwhile by its own executor (fine), or taken from us (stop it).
                    if running.withLock({ $0[id] }) != nil { job.stop(.lostOwnership) }
                }
            } catch {
                logger.warning("heartbeat failed", metadata: ["error": "\(String(reflecting: error))"])
                // The statement is over (it failed), so closing cannot strand it.
                try? await connection?.close()
                connection = nil
            }
        }
        try? await connection?.close()
    }

    /// The fence, in a loop of its own so that a heartbeat stuck on a dead connection cannot
    /// hold it up: a job whose ownership the database has not confirmed for `fenceAfter` may
    /// already have been failed by the leader and rerun elsewhere, so it stops here and
    /// records nothing. Checked four times a second, so it fires within 250 ms of its bound.
    private func fenceLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let now = ContinuousClock.now
            for job in running.withLock({ Array($0.values) }) where now - job.confirmed.withLock({ $0 }) > configuration.fenceAfter {
                if job.reason == nil {
                    logger.error("stopping a job whose ownership could not be confirmed in time", metadata: ["job_id": "\(job.id.uuidString.lowercased())", "attempt": "\(job.attempt)"])
                }
                job.stop(.lostOwnership)
            }
        }
    }
}

/// ``ExecutorPool/firstOf(_:_:)``'s state: the first value wins; it may come before the
/// continuation exists.
struct FirstOfRace<T: Sendable>: Sendable {
    var continuation: CheckedContinuation<T, Never>?
    var early: T?
    var decided = false
}

/// The executor pool's series on the ops endpoint (docs/operations.md lists them).
enum EngineMetrics {
    static let slots = Gauge(label: "ferry_executor_slots")
    static let busy = Gauge(label: "ferry_executor_busy")

    /// One attempt ended on this replica: counted by kind and status, its time recorded.
    static func finished(kind: String, status: JobStatus, after duration: Duration) {
        let dimensions = [("kind", kind), ("status", status.name.lowercased())]
        Counter(label: "ferry_jobs_finished_total", dimensions: dimensions).increment()
        Metrics.Timer(label: "ferry_job_duration_seconds", dimensions: dimensions, preferredDisplayUnit: .seconds)
            .recordNanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// A job of this replica was handed over at shutdown (released, not ended).
    static func handedOver(kind: String) {
        Counter(label: "ferry_jobs_handed_over_total", dimensions: [("kind", kind)]).increment()
    }

    /// Adds what a job copied since its last progress write to the copy counters.
    static func copied(_ job: ExecutorPool.RunningJob, _ progress: JobProgress) {
        let (rows, bytes) = job.counted.withLock { counted -> (Int64, Int64) in
            let delta = (max(0, progress.rowsCopied - counted.rows), max(0, progress.bytesCopied - counted.bytes))
            counted = (max(counted.rows, progress.rowsCopied), max(counted.bytes, progress.bytesCopied))
            return delta
        }
        if rows > 0 { Counter(label: "ferry_rows_copied_total", dimensions: [("kind", job.kind)]).increment(by: rows) }
        if bytes > 0 { Counter(label: "ferry_bytes_copied_total", dimensions: [("kind", job.kind)]).increment(by: bytes) }
    }
}
