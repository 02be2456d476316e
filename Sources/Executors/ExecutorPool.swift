import ControlDatabase
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// A bounded pool of executors: claims admitted (RUNNING, unowned) jobs from the control
/// database, runs them, heartbeats them, and records how they end.
///
/// Any replica with a free executor may claim any admitted job (`FOR UPDATE SKIP LOCKED`, so
/// replicas never wait on each other's claims). A claimed job carries this replica's name as
/// its owner and a heartbeat renewed every `heartbeatInterval`; the leader fails jobs whose
/// heartbeat stopped. The heartbeat also reads cancel requests, so CancelJob works even
/// without notifications.
public final class ExecutorPool: Service, Sendable {
    public struct Configuration: Sendable {
        /// Jobs this replica runs at once (default 4, docs/jobs.md).
        public var executors: Int = 4
        public var heartbeatInterval: Duration = .seconds(2)
        /// How often to look for admitted jobs without a notification.
        public var pollInterval: Duration = .seconds(1)
        /// How often progress reaches the database at most (the latest figures win).
        public var progressInterval: Duration = .milliseconds(250)
        /// A job whose ownership the database has not confirmed for this long is stopped
        /// here, recording nothing: by then the leader may have failed it and a rerun may be
        /// writing the same tenant. Keep it below the leader's heartbeat timeout.
        public var fenceAfter: Duration = .seconds(12)
        public init() {}
    }

    /// Why a running job's task was cancelled.
    enum StopReason: Sendable {
        case cancelRequested
        /// The job is no longer ours (the leader rescued it): record nothing.
        case lost
        case shutdown
    }

    final class RunningJob: Sendable {
        let id: UUID
        let task: Mutex<Task<Void, any Error>?> = Mutex(nil)
        let reason = Mutex<StopReason?>(nil)
        let progress = Mutex<(latest: JobProgress?, written: Bool)>((nil, true))
        /// Ends the progress flusher between writes (a write is never cut off midway).
        let runnerDone = Mutex(false)
        /// Rung by every report and at the end: the flusher writes as soon as there is news.
        let reported = Wakeup()
        /// Rung only at the end: cuts the flusher's rate-limiting pause short.
        let finished = Wakeup()
        /// When the database last confirmed the job is ours (claim or heartbeat).
        let confirmed = Mutex(ContinuousClock.now)

        init(id: UUID) { self.id = id }

        func stop(_ why: StopReason) {
            let first = reason.withLock { reason -> Bool in
                guard reason == nil else { return false }
                reason = why
                return true
            }
            if first { task.withLock { $0 }?.cancel() }
        }
    }

    public let replica: String
    private let client: PostgresClient
    private let runners: JobRunners
    private let configuration: Configuration
    private let logger: Logger
    private let wakeup = Wakeup()
    private let running = Mutex<[UUID: RunningJob]>([:])
    private let onFinished: @Sendable () async -> Void

    /// - Parameter onFinished: called after a job of this replica ended (capacity freed).
    public init(
        replica: String, client: PostgresClient, runners: JobRunners, configuration: Configuration, logger: Logger,
        onFinished: @escaping @Sendable () async -> Void
    ) {
        self.replica = replica
        self.client = client
        self.runners = runners
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "executors"
        self.logger = logger
        self.onFinished = onFinished
    }

    /// Look for admitted jobs now (a notification said one is waiting).
    public func wake() { wakeup.signal() }

    /// Stops a job this replica runs (CancelJob's notification); ignored for other jobs.
    public func cancel(_ id: UUID) {
        running.withLock { $0[id] }?.stop(.cancelRequested)
    }

    public var runningJobIDs: [UUID] { running.withLock { Array($0.keys) } }

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.heartbeatLoop() }
            group.addTask { await self.fenceLoop() }
            // Claim while not shutting down; a graceful shutdown stops claiming and stops the
            // running jobs, which end FAILED (retryable) and can be rerun to resume.
            await withGracefulShutdownHandler {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    if self.running.withLock({ $0.count }) < self.configuration.executors, let record = await self.claim() {
                        // Registered before the task starts: it counts against the pool, gets
                        // heartbeats and hears cancel and shutdown from this moment on.
                        let job = RunningJob(id: record.id)
                        self.running.withLock { $0[record.id] = job }
                        if Task.isShuttingDownGracefully { job.stop(.shutdown) }
                        group.addTask { await self.execute(record, as: job) }
                        continue
                    }
                    await self.wakeup.wait(upTo: self.configuration.pollInterval)
                }
            } onGracefulShutdown: {
                self.wakeup.signal()
                for job in self.running.withLock({ Array($0.values) }) { job.stop(.shutdown) }
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
                let rows = try await connection.execute("""
                    UPDATE jobs SET owner = \(replica), heartbeat_at = clock_timestamp(), updated_at = clock_timestamp()
                     WHERE id = (SELECT id FROM jobs WHERE status = 'RUNNING' AND owner IS NULL
                                  ORDER BY started_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                       AND status = 'RUNNING' AND owner IS NULL
                    RETURNING \(unescaped: JobRecord.columns())
                    """, logger: logger)
                return try rows.first.map(JobRecord.init(row:))
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
            return logger
        }()
        defer { running.withLock { $0[id] = nil } }
        jobLogger.info("job started", metadata: ["kind": "\(record.kind.name)", "attempt": "\(record.attempt)"])

        let outcome: (status: JobStatus, error: JobError?)
        if let runner = runners.runner(for: record.kind) {
            guard let resumeState = await readResumeState(id, logger: jobLogger) else {
                // Running without it would redo work the lineage finished: fail, retryably.
                await recordOutcome((.failed, JobError(code: StatusCode.unavailable.rawValue, message: "cannot read the job's resume state; rerun to resume", retryable: true)), for: id, logger: jobLogger)
                await onFinished()
                return
            }
            let context = JobContext(
                job: record.job, resumeState: resumeState, logger: jobLogger,
                progress: { progress in
                    job.progress.withLock { $0 = (progress, false) }
                    job.reported.signal()
                },
                saveResumeState: { [client, replica] state in
                    let saved = try await client.withConnection { try await JobStore.saveResumeState(id, owner: replica, state: state, on: $0, logger: jobLogger) }
                    if !saved { throw CancellationError() }
                })
            let task = Task { try await runner.run(context) }
            job.task.withLock { $0 = task }
            if job.reason.withLock({ $0 }) != nil { task.cancel() }
            let flusher = Task { await self.flushProgress(job, logger: jobLogger) }
            let result = await task.result
            job.runnerDone.withLock { $0 = true }
            job.reported.signal()
            job.finished.signal()
            _ = await flusher.result
            await writeProgress(job, logger: jobLogger)
            outcome = Self.outcome(result, reason: job.reason.withLock { $0 })
        } else {
            outcome = (.failed, JobError(code: StatusCode.unimplemented.rawValue, message: "job kind \(record.kind.name) is not available on replica \(replica)", retryable: true))
        }

        if job.reason.withLock({ $0 }) == .lost {
            jobLogger.warning("job stopped: it is no longer ours (its heartbeat was too late and the leader failed it)")
        } else {
            await recordOutcome(outcome, for: id, logger: jobLogger)
        }
        // The slot is free: look for the next admitted job now, not at the next poll.
        wakeup.signal()
        await onFinished()
    }

    /// The lineage's resume state, retried a few times; nil if it cannot be read.
    private func readResumeState(_ id: UUID, logger: Logger) async -> JSONValue? {
        for attempt in 1...5 {
            do {
                return try await client.withConnection { try await JobStore.resumeState(id, on: $0, logger: logger) }
            } catch {
                logger.warning("cannot read the resume state; retrying", metadata: ["attempt": "\(attempt)", "error": "\(String(reflecting: error))"])
                try? await Task.sleep(for: .milliseconds(200 * attempt))
            }
        }
        return nil
    }

    static func outcome(_ result: Result<Void, any Error>, reason: StopReason?) -> (status: JobStatus, error: JobError?) {
        switch (result, reason) {
        case (.success, _):
            return (.succeeded, nil)
        case (.failure(let failure as JobFailure), nil):
            return (.failed, failure.jobError)
        case (.failure, .cancelRequested?):
            return (.cancelled, nil)
        case (.failure, .shutdown?):
            return (.failed, JobError(code: StatusCode.unavailable.rawValue, message: "the replica running the job shut down; rerun to resume", retryable: true))
        case (.failure(let error), _):
            return (.failed, JobError(code: StatusCode.unknown.rawValue, message: "\(error)", retryable: true))
        }
    }

    /// Writes the terminal status, retrying while the database is unreachable: the job's
    /// outcome must not be lost to a blip (the leader would otherwise fail it later).
    private func recordOutcome(_ outcome: (status: JobStatus, error: JobError?), for id: UUID, logger: Logger) async {
        for attempt in 1...20 {
            do {
                let record = try await client.withConnection { connection in
                    try await JobStore.finish(id, owner: replica, status: outcome.status, error: outcome.error, on: connection, logger: logger)
                }
                if record == nil {
                    logger.warning("job was already ended elsewhere; its outcome here is dropped", metadata: ["status": "\(outcome.status.name)"])
                } else {
                    logger.info("job ended", metadata: ["status": "\(outcome.status.name)", "error": "\(outcome.error?.message ?? "")"])
                }
                return
            } catch {
                logger.warning("cannot record the job's end; retrying", metadata: ["attempt": "\(attempt)", "error": "\(String(reflecting: error))"])
                try? await Task.sleep(for: .milliseconds(250 * attempt))
            }
        }
    }

    // MARK: Progress and heartbeats

    /// Writes progress as soon as it is reported, then at most once per `progressInterval`
    /// (the latest figures win), until the runner is done.
    private func flushProgress(_ job: RunningJob, logger: Logger) async {
        while !job.runnerDone.withLock({ $0 }) {
            await job.reported.wait(upTo: .seconds(60))
            if job.runnerDone.withLock({ $0 }) { return }
            await writeProgress(job, logger: logger)
            await job.finished.wait(upTo: configuration.progressInterval)
        }
    }

    /// Writes the latest progress if it changed since the last write.
    private func writeProgress(_ job: RunningJob, logger: Logger) async {
        guard let progress = job.progress.withLock({ state -> JobProgress? in
            guard !state.written, let latest = state.latest else { return nil }
            state.written = true
            return latest
        }) else { return }
        do {
            let stillOurs = try await client.withConnection { connection in
                try await JobStore.recordProgress(job.id, owner: replica, progress: progress, on: connection, logger: logger)
            }
            if !stillOurs { job.stop(.lost) }
        } catch {
            // Not written: unless newer figures came meanwhile, these are still the latest.
            job.progress.withLock { state in
                if state.latest == progress { state.written = false }
            }
            logger.debug("progress not written", metadata: ["error": "\(error)"])
        }
    }

    /// One statement per interval for all of this replica's jobs: renews their heartbeats,
    /// notices cancel requests, and notices jobs that are no longer ours.
    private func heartbeatLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.heartbeatInterval)
            let jobs = running.withLock { $0 }
            guard !jobs.isEmpty else { continue }
            do {
                let ids = Array(jobs.keys)
                let rows = try await client.withConnection { connection in
                    try await connection.execute("""
                        UPDATE jobs SET heartbeat_at = clock_timestamp()
                         WHERE id = ANY(\(ids)) AND owner = \(replica) AND status = 'RUNNING'
                        RETURNING id, cancel_requested_at IS NOT NULL
                        """, logger: logger)
                }
                var seen = Set<UUID>()
                let now = ContinuousClock.now
                for row in rows {
                    let (id, cancelRequested) = try row.decode((UUID, Bool).self)
                    seen.insert(id)
                    jobs[id]?.confirmed.withLock { $0 = now }
                    if cancelRequested { jobs[id]?.stop(.cancelRequested) }
                }
                for (id, job) in jobs where !seen.contains(id) {
                    // Ended meanwhile by its own executor (fine), or taken from us (stop it).
                    if running.withLock({ $0[id] }) != nil { job.stop(.lost) }
                }
            } catch {
                logger.warning("heartbeat failed", metadata: ["error": "\(String(reflecting: error))"])
            }
        }
    }

    /// The fence, in a loop of its own so that a heartbeat stuck on a dead connection cannot
    /// hold it up: a job whose ownership the database has not confirmed for `fenceAfter` may
    /// already have been failed by the leader and rerun elsewhere, so it stops here and
    /// records nothing.
    private func fenceLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.heartbeatInterval)
            let now = ContinuousClock.now
            for job in running.withLock({ Array($0.values) }) where now - job.confirmed.withLock({ $0 }) > configuration.fenceAfter {
                logger.error("stopping a job whose ownership could not be confirmed in time", metadata: ["job_id": "\(job.id.uuidString.lowercased())"])
                job.stop(.lost)
            }
        }
    }
}
