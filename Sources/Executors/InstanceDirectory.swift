import ControlDatabase
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO

/// Connections to the registered instances, by instance id.
///
/// An instance's DSN is used as registered, directly: never through a transaction pooler,
/// because the data plane keeps session state (exported snapshots, the fence's session
/// advisory lock) that a pooler would hand to another client between transactions.
public final class InstanceDirectory: Sendable {
    private let controlDatabase: PostgresClient
    private let settings: JobSettings

    public init(controlDatabase: PostgresClient, settings: JobSettings) {
        self.controlDatabase = controlDatabase
        self.settings = settings
    }

    /// The registered URL of `instance`; NOT_FOUND when it is not registered.
    public func url(_ instance: String, logger: Logger) async throws -> DatabaseURL {
        let dsn: String?
        do {
            dsn = try await controlDatabase.withConnection { connection in
                try await connection.execute("SELECT dsn FROM instances WHERE id = \(instance)", logger: logger).first?.decode(String.self)
            }
        } catch {
            throw PlanRefusal.unavailable("the control database is unavailable; retry")
        }
        guard let dsn else { throw PlanRefusal.notFound("instance \(instance) is not registered") }
        do {
            var url = try DatabaseURL(parsingConnectionString: dsn)
            url.connectTimeout = min(url.connectTimeout, settings.connectTimeout)
            return url
        } catch {
            throw PlanRefusal.failedPrecondition(["instance \(instance) has a DSN this server cannot parse: \(error.message)"])
        }
    }

    /// Opens a session on `instance` named `applicationName` (how any replica finds it in
    /// `pg_stat_activity`). Failures are UNAVAILABLE naming the instance, never its password.
    public func connect(_ instance: String, applicationName: String, logger: Logger) async throws -> PostgresConnection {
        try await connect(try await url(instance, logger: logger), instance: instance, applicationName: applicationName, logger: logger)
    }

    /// Opens a session with a URL already looked up (a job stopping while the control database
    /// is unreachable must still reach its instances).
    public func connect(_ url: DatabaseURL, instance: String, applicationName: String, logger: Logger) async throws -> PostgresConnection {
        var url = url
        url.applicationName = applicationName
        do {
            return try await url.connect(logger: logger)
        } catch {
            throw PlanRefusal.unavailable("instance \(instance) is unreachable: \(error.message)")
        }
    }

    /// Runs `body` on a short session of `instance` (plan steps, clean-ups).
    public func withSession<T: Sendable>(
        _ instance: String, applicationName: String = "ferry plan", logger: Logger, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await connect(instance, applicationName: applicationName, logger: logger)
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// Terminates every session of the attempt `tag` on the instances `job` touches (a job
    /// ended without its owner, by the leader). Best effort, logged.
    public func endSessions(of tag: SessionTag, job: UUID, logger: Logger) async {
        do {
            let instances = try await controlDatabase.withConnection { connection in
                try await connection.execute("SELECT DISTINCT instance_id FROM job_instances WHERE job_id = \(job)", logger: logger)
                    .map { try $0.decode(String.self) }
            }
            for instance in instances {
                let ended = try await withSession(instance, applicationName: "ferry stop", logger: logger) { connection in
                    try await connection.execute("""
                        SELECT count(pg_terminate_backend(pid))::int FROM pg_stat_activity WHERE application_name = \(tag.applicationName)
                        """, logger: logger).first?.decode(Int.self) ?? 0
                }
                if ended > 0 { logger.warning("ended sessions of a job its owner could not end", metadata: ["job_id": "\(job.uuidString.lowercased())", "attempt": "\(tag.attempt)", "instance": "\(instance)", "sessions": "\(ended)"]) }
            }
        } catch {
            logger.warning("could not end a rescued job's sessions", metadata: ["job_id": "\(job.uuidString.lowercased())", "attempt": "\(tag.attempt)", "error": "\(error)"])
        }
    }

    /// Whether `tenant` (a schema) exists on `instance`.
    public func tenantExists(_ instance: String, _ tenant: String, logger: Logger) async throws -> Bool {
        try await withSession(instance, logger: logger) { connection in
            !(try await connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(tenant)", logger: logger)).isEmpty
        }
    }
}

/// How one attempt's sessions are named on the instances: `ferry <root job id> <attempt>`.
/// From the name alone any replica finds every session of an attempt, and a later attempt of
/// the same lineage finds those of every earlier one.
public struct SessionTag: Sendable, Hashable {
    public var root: UUID
    public var attempt: Int32

    public init(root: UUID, attempt: Int32) {
        self.root = root
        self.attempt = attempt
    }

    static let prefix = "ferry "

    public var applicationName: String { "\(Self.prefix)\(root.uuidString.lowercased()) \(attempt)" }

    /// Parses an application_name; nil for a session that is not a job's.
    public init?(applicationName: String) {
        let parts = applicationName.split(separator: " ")
        guard parts.count == 3, parts[0] == "ferry", let root = UUID(uuidString: String(parts[1])), let attempt = Int32(parts[2]) else { return nil }
        self.init(root: root, attempt: attempt)
    }
}

/// Why a running job is being stopped, as its kind is told.
public enum StopReason: Sendable, Equatable {
    /// CancelJob: the job ends CANCELLED.
    case cancelled
    /// The job is no longer this replica's (the leader failed it, or a later attempt took its
    /// target): nothing more may be written or recorded.
    case lostOwnership
    /// The replica is shutting down: the job is handed over (released for another replica
    /// to continue from its checkpoints) or, when that cannot be done within the hand-over
    /// timeout, ends FAILED, retryable, and a rerun resumes it.
    case shuttingDown
}

/// One attempt's sessions on the instances, and its fences.
///
/// **The fence.** At most one attempt writes a target (instance, tenant) at a time, enforced
/// at the target itself, whatever the control database or the replicas' clocks say. Before
/// its first write to a tenant, an attempt opens a *gate* session that takes the session
/// advisory lock `(Ferry's fence namespace, hashtext(tenant))` on the target and holds it for
/// the attempt's life, or until the attempt gives it back when it is done with the tenant
/// (``releaseGate(_:tenant:)``). To get it, the attempt first terminates, on the target, every session
/// of the earlier attempts of its lineage (found by application_name) and waits for them to
/// end; a gate held by another lineage is terminated only when the control database says
/// that job is no longer RUNNING (else it waits, then fails retryably). After taking the lock
/// it sweeps the earlier attempts' sessions once more. Every session that writes opens only
/// after checking, on itself, that its attempt's gate holds the lock. So an attempt that was
/// frozen (SIGSTOP, a paused VM) or cut off and comes back finds its sessions gone, and any
/// session it opens fails that check: it can no longer write.
public actor InstanceSessions {
    public nonisolated let tag: SessionTag
    private let directory: InstanceDirectory
    private let controlDatabase: PostgresClient
    private let settings: JobSettings
    private let logger: Logger
    /// The job this attempt is, and the replica running it: checked in the control database
    /// once the fence is taken.
    private let jobID: UUID
    private let owner: String
    /// Called when the fence shows this attempt lost its target (a later attempt took it).
    private let onLost: @Sendable () -> Void

    private struct GateKey: Hashable {
        var instance: String
        var tenant: String
    }

    private var sessions: [ObjectIdentifier: (instance: String, connection: PostgresConnection)] = [:]
    private var gates: [GateKey: Task<(connection: PostgresConnection, pid: Int32), any Error>] = [:]
    /// The URL of every instance this attempt touched, looked up once: stopping needs them
    /// even when the control database is what the replica lost.
    private var touched: [String: DatabaseURL] = [:]
    private var stopped = false
    /// The terminations of ``stop()``, while they run.
    private var stopping: Task<Void, Never>?
    /// The gate sessions among `sessions`, closed last.
    private var gateHolders: Set<ObjectIdentifier> = []

    /// "FRRF": the fence's advisory lock namespace on instances, apart from the coordinator's.
    static let fenceNamespace: Int32 = 0x4652_5246

    public init(tag: SessionTag, jobID: UUID, owner: String, directory: InstanceDirectory, controlDatabase: PostgresClient,
                settings: JobSettings, logger: Logger, onLost: @escaping @Sendable () -> Void) {
        self.tag = tag
        self.jobID = jobID
        self.owner = owner
        self.directory = directory
        self.controlDatabase = controlDatabase
        self.settings = settings
        self.logger = logger
        self.onLost = onLost
    }

    public nonisolated var applicationName: String { tag.applicationName }

    /// A session on `instance` that is not fenced: read-only unless `readOnly` is false (for
    /// writes outside any tenant, which no fence covers). Close it with ``close(_:)``, or
    /// leave it: the executor closes every session when the attempt ends.
    public func open(_ instance: String, readOnly: Bool = true) async throws -> PostgresConnection {
        try checkNotStopped()
        let connection = try await directory.connect(try await url(instance), instance: instance, applicationName: applicationName, logger: logger)
        _ = try register(instance, connection)
        if readOnly { try await connection.execute("SET default_transaction_read_only = on", logger: logger) }
        return connection
    }

    private func url(_ instance: String) async throws -> DatabaseURL {
        if let known = touched[instance] { return known }
        let url = try await directory.url(instance, logger: logger)
        touched[instance] = url
        return url
    }

    /// A session allowed to write `tenant` on `instance`: it opens only while this attempt
    /// holds the tenant's fence there (taken on first use, see the type's documentation).
    /// Throws `CancellationError` when a later attempt has taken the target.
    public func openWriter(_ instance: String, tenant: String) async throws -> PostgresConnection {
        let gate = try await gate(instance, tenant)
        try checkNotStopped()
        let connection = try await directory.connect(try await url(instance), instance: instance, applicationName: applicationName, logger: logger)
        _ = try register(instance, connection)
        let holds = try await connection.execute("""
            SELECT EXISTS (
                SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE \(unescaped: Self.fenceLock) AND l.objid::text = (hashtext(\(tenant))::bigint & 4294967295)::text
                   AND l.pid = \(gate.pid) AND a.application_name = \(applicationName))
            """, logger: logger).first?.decode(Bool.self) ?? false
        guard holds else {
            await close(connection)
            logger.error("the target's fence is no longer this attempt's: stopping", metadata: ["instance": "\(instance)", "tenant": "\(tenant)"])
            onLost()
            throw CancellationError()
        }
        return connection
    }

    /// The URL of `instance` with this attempt's application_name, for a session opened
    /// outside this actor (the data path's libpq connections). Such a session is ended by
    /// ``stop()`` with the others (it is found by its name); its opener closes it.
    public func sessionURL(_ instance: String) async throws -> DatabaseURL {
        try checkNotStopped()
        var url = try await url(instance)
        url.applicationName = applicationName
        return url
    }

    /// For a writer session opened outside this actor: its URL (``sessionURL(_:)``) and the
    /// statement it must run on itself before writing. The statement returns `t` only while
    /// this attempt's gate holds `tenant`'s fence on `instance` (taken here on first use);
    /// on `f`, call ``fenceLost(instance:tenant:)`` and write nothing.
    public func writerAccess(_ instance: String, tenant: String) async throws -> (url: DatabaseURL, fenceCheck: String) {
        let gate = try await gate(instance, tenant)
        let url = try await sessionURL(instance)
        let check = """
            SELECT EXISTS (
                SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE \(Self.fenceLock) AND l.objid::text = (hashtext(\(Self.literal(tenant)))::bigint & 4294967295)::text
                   AND l.pid = \(gate.pid) AND a.application_name = \(Self.literal(applicationName)))
            """
        return (url, check)
    }

    /// Reports that a session opened through ``writerAccess(_:tenant:)`` found the fence is
    /// no longer this attempt's: the attempt stops.
    public func fenceLost(instance: String, tenant: String) {
        logger.error("the target's fence is no longer this attempt's: stopping", metadata: ["instance": "\(instance)", "tenant": "\(tenant)"])
        onLost()
    }

    /// A SQL string literal (standard_conforming_strings, which PostgreSQL has on since 9.1).
    static func literal(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }

    /// Closes a session opened here.
    public func close(_ connection: PostgresConnection) async {
        sessions[ObjectIdentifier(connection)] = nil
        try? await connection.close()
    }

    // MARK: The gate

    private func gate(_ instance: String, _ tenant: String) async throws -> (connection: PostgresConnection, pid: Int32) {
        try checkNotStopped()
        let key = GateKey(instance: instance, tenant: tenant)
        if let existing = gates[key] { return try await existing.value }
        // Stored before any await, so concurrent writers of one tenant share one gate.
        let task = Task { try await self.acquireGate(instance, tenant) }
        gates[key] = task
        return try await task.value
    }

    /// Gives back `tenant`'s fence on `instance` once this attempt has finished writing it
    /// (instance_replace, after each tenant's copy): its gate session closes, which releases
    /// the advisory lock on the server, and is forgotten. So an attempt that writes many
    /// tenants one after another holds a gate only for the tenants it is writing, not one
    /// session per tenant it ever wrote (hundreds of tenants would exhaust the target's
    /// `max_connections`). A later ``writerAccess(_:tenant:)`` or ``openWriter(_:tenant:)``
    /// of the tenant takes the fence anew, exactly as the first time (earlier attempts swept,
    /// the control database asked). Close the tenant's writer sessions first: a writer still
    /// open would go on writing without the fence, and one that checked the old gate fails
    /// its check against a new one (another pid). A gate still being taken is cancelled (its
    /// session closes when the acquisition ends); a gate that was never taken, or one that
    /// failed, is forgotten, so the next writer tries again.
    public func releaseGate(_ instance: String, tenant: String) async {
        let key = GateKey(instance: instance, tenant: tenant)
        guard let task = gates.removeValue(forKey: key) else { return }
        task.cancel()
        // A failed acquisition closed its own session (``acquireGate(_:_:)``).
        guard let gate = try? await task.value else { return }
        let id = ObjectIdentifier(gate.connection)
        sessions[id] = nil
        gateHolders.remove(id)
        try? await gate.connection.close()
        logger.info("released the target's fence", metadata: ["instance": "\(instance)", "tenant": "\(tenant)", "pid": "\(gate.pid)"])
    }

    /// Whether this attempt holds (or is taking) a gate for `tenant` on `instance`.
    public func holdsGate(_ instance: String, tenant: String) -> Bool {
        gates[GateKey(instance: instance, tenant: tenant)] != nil
    }

    private func acquireGate(_ instance: String, _ tenant: String) async throws -> (connection: PostgresConnection, pid: Int32) {
        let connection = try await directory.connect(try await url(instance), instance: instance, applicationName: applicationName, logger: logger)
        _ = try register(instance, connection)
        let id = ObjectIdentifier(connection)
        gateHolders.insert(id)
        do {
            return try await takeFence(instance, tenant, on: connection)
        } catch {
            // A gate that holds no fence is of no use: its session goes now, not at the
            // attempt's end (a failing tenant of an instance_replace must not leave one behind).
            sessions[id] = nil
            gateHolders.remove(id)
            try? await connection.close()
            throw error
        }
    }

    private func takeFence(_ instance: String, _ tenant: String, on connection: PostgresConnection) async throws -> (connection: PostgresConnection, pid: Int32) {
        let pid = try await connection.execute("SELECT pg_backend_pid()", logger: logger).first?.decode(Int32.self) ?? 0
        // The gate idles for the attempt's life: a server-side idle_session_timeout must not
        // end it (and with it the fence) halfway through.
        try await connection.execute(
            "SELECT set_config('idle_session_timeout', '0', false) WHERE current_setting('server_version_num')::int >= 140000", logger: logger)
        let deadline = ContinuousClock.now + settings.fenceWait
        while true {
            try checkNotStopped()
            try await terminateEarlierAttempts(on: connection)
            let taken = try await connection.execute(
                "SELECT pg_try_advisory_lock(\(Self.fenceNamespace), hashtext(\(tenant)))", logger: logger
            ).first?.decode(Bool.self) ?? false
            if taken { break }
            let holder = try await holders(of: tenant, on: connection)
            var waitingFor: [String] = []
            for (holderPid, name) in holder {
                if let theirs = SessionTag(applicationName: name) {
                    if theirs == tag {
                        // This attempt's own gate for another tenant whose key collides.
                        waitingFor.append("this attempt's fence of another tenant (pid \(holderPid))")
                        continue
                    }
                    if theirs.root == tag.root && theirs.attempt > tag.attempt {
                        // A later attempt of this lineage writes the target: this one is over.
                        logger.error("a later attempt holds the target's fence: stopping", metadata: ["instance": "\(instance)", "tenant": "\(tenant)", "holder": "\(name)"])
                        onLost()
                        throw CancellationError()
                    }
                    if theirs.root != tag.root, try await isRunning(theirs) {
                        waitingFor.append("\(name) (pid \(holderPid))")
                        continue
                    }
                    // An earlier attempt, or a job that is no longer RUNNING: a zombie writer.
                    // Every session of that attempt goes, not only its gate: its writers may be
                    // inside a statement the server has not noticed is orphaned.
                    logger.warning("terminating a fenced-out writer of the target", metadata: ["instance": "\(instance)", "tenant": "\(tenant)", "holder": "\(name)", "pid": "\(holderPid)"])
                    try await connection.execute("""
                        SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                         WHERE datname = current_database() AND application_name = \(name) AND pid <> pg_backend_pid()
                        """, logger: logger)
                } else {
                    waitingFor.append("\(name.isEmpty ? "a session" : name) (pid \(holderPid))")
                }
            }
            if ContinuousClock.now > deadline {
                throw JobFailure(.unavailable, "tenant \(tenant) on instance \(instance) is held by \(waitingFor.joined(separator: ", ")); retry when it is free", retryable: true)
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        // Sessions of an earlier attempt that connected while its gate was still ending.
        try await terminateEarlierAttempts(on: connection)
        // Holding the lock, make sure this attempt is still the lineage's current one: an
        // attempt that was frozen before it took its fence may wake after the next attempt
        // released it (finished) or before that one took it. Whoever comes later must now
        // take the lock from us, terminating this session first.
        let current: Bool
        do {
            current = try await controlDatabase.withConnection { control in
                try await JobLifecycle.isCurrentAttempt(job: jobID, owner: owner, root: tag.root, attempt: tag.attempt, on: control, logger: logger)
            }
        } catch {
            try? await connection.close()
            throw JobFailure(.unavailable, "cannot confirm the job in the control database after taking the target's fence; rerun to resume", retryable: true)
        }
        guard current else {
            try? await connection.close()
            logger.error("took the target's fence but the job is no longer this attempt's: stopping", metadata: ["instance": "\(instance)", "tenant": "\(tenant)"])
            onLost()
            throw CancellationError()
        }
        logger.info("holding the target's fence", metadata: ["instance": "\(instance)", "tenant": "\(tenant)", "pid": "\(pid)"])
        return (connection, pid)
    }

    /// Terminates every session of an earlier attempt of this lineage in this database, and
    /// waits until they are gone (`pg_terminate_backend` may time out with the backend still
    /// alive: looked for again until none is left, within the fence wait).
    private func terminateEarlierAttempts(on connection: PostgresConnection) async throws {
        let deadline = ContinuousClock.now + settings.fenceWait
        while true {
            let rows = try await connection.execute("""
                SELECT pid, application_name, pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name LIKE \(SessionTag.prefix + tag.root.uuidString.lowercased() + " %")
                   AND split_part(application_name, ' ', 3) ~ '^[0-9]{1,9}$'
                   AND split_part(application_name, ' ', 3)::int < \(tag.attempt)
                """, logger: logger)
            var lingering = false
            for row in rows {
                let (pid, name, ended) = try row.decode((Int32, String, Bool).self)
                logger.warning("terminated a session of an earlier attempt", metadata: ["session": "\(name)", "pid": "\(pid)", "ended": "\(ended)"])
                if !ended { lingering = true }
            }
            guard lingering else { return }
            if ContinuousClock.now > deadline {
                throw JobFailure(.unavailable, "sessions of an earlier attempt would not end on the target; retry", retryable: true)
            }
        }
    }

    /// The sessions holding `tenant`'s fence lock in this database.
    private func holders(of tenant: String, on connection: PostgresConnection) async throws -> [(Int32, String)] {
        try await connection.execute("""
            SELECT a.pid, COALESCE(a.application_name, '') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE \(unescaped: Self.fenceLock) AND l.objid::text = (hashtext(\(tenant))::bigint & 4294967295)::text
            """, logger: logger).map { try $0.decode((Int32, String).self) }
    }

    /// Granted fence locks in the current database; callers add the tenant's key
    /// (`l.objid`). A two-key advisory lock shows its keys as `classid`/`objid`, unsigned,
    /// with `objsubid = 2`.
    static let fenceLock = """
        l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid::text = '\(fenceNamespace)'
        """

    private func isRunning(_ other: SessionTag) async throws -> Bool {
        let status = try await controlDatabase.withConnection { connection in
            try await JobLifecycle.status(root: other.root, attempt: other.attempt, on: connection, logger: logger)
        }
        return status == .running
    }

    // MARK: Stopping

    private func register(_ instance: String, _ connection: PostgresConnection) throws -> PostgresConnection {
        guard !stopped else {
            Task { try? await connection.close() }
            throw CancellationError()
        }
        sessions[ObjectIdentifier(connection)] = (instance, connection)
        return connection
    }

    private func checkNotStopped() throws {
        if stopped { throw CancellationError() }
    }

    /// Ends the attempt's work on the instances at once: no new session opens, and every
    /// session of this attempt is terminated on its server (a statement in flight stops
    /// there, not only in this process). Best effort per instance, bounded by the connect
    /// timeout.
    public func stop() async {
        // A second caller waits for the first: the hand-over must not release the job while
        // this attempt's terminations are still on their way (they would end the next
        // owner's sessions, which bear the same name).
        if let stopping { return await stopping.value }
        guard !stopped else { return }
        stopped = true
        let task = Task { await self.terminateEverywhere() }
        stopping = task
        await task.value
        await closeAll()
    }

    private func terminateEverywhere() async {
        await withTaskGroup(of: Void.self) { group in
            for (instance, url) in touched {
                group.addTask { [directory, applicationName, logger] in
                    do {
                        let connection = try await directory.connect(url, instance: instance, applicationName: "ferry stop", logger: logger)
                        let ended = try? await connection.execute("""
                            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                             WHERE application_name = \(applicationName) AND pid <> pg_backend_pid()
                            """, logger: logger)
                        try? await connection.close()
                        if ended == nil { throw CancellationError() }
                    } catch {
                        logger.warning("could not end the job's sessions on an instance", metadata: ["instance": "\(instance)", "error": "\(error)"])
                    }
                }
            }
        }
    }

    /// Makes sure no session of this attempt is left on any instance it touched: terminates
    /// any that remain and looks again, for up to `within`. True only when every instance
    /// answered that none is left. A job is handed over only then: the next owner runs the
    /// same attempt, and its fence never terminates sessions of its own attempt.
    public func confirmEnded(within: Duration = .seconds(5)) async -> Bool {
        if let stopping { await stopping.value }
        stopped = true
        let deadline = ContinuousClock.now + within
        for (instance, url) in touched {
            do {
                let connection = try await directory.connect(url, instance: instance, applicationName: "ferry stop", logger: logger)
                defer { Task { try? await connection.close() } }
                while true {
                    // Looked for again until none is left (the one-argument form: PostgreSQL 13
                    // and older have no timeout argument).
                    let left = try await connection.execute("""
                        SELECT count(pg_terminate_backend(pid))::int FROM pg_stat_activity
                         WHERE application_name = \(applicationName) AND pid <> pg_backend_pid()
                        """, logger: logger).first?.decode(Int.self) ?? 0
                    if left == 0 { break }
                    guard ContinuousClock.now < deadline else {
                        logger.warning("sessions of the job are still open on an instance", metadata: ["instance": "\(instance)", "sessions": "\(left)"])
                        return false
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
            } catch {
                logger.warning("cannot confirm that the job's sessions ended on an instance", metadata: ["instance": "\(instance)", "error": "\(error)"])
                return false
            }
        }
        return true
    }

    /// Closes every session (writers first, the gates last) when the attempt ends.
    public func closeAll() async {
        stopped = true
        // Every session is registered as it opens, gates included: close writers first and
        // the gates last, without waiting on a gate still being taken (its task ends when
        // its session closes, or at its next `stopped` check).
        for task in gates.values { task.cancel() }
        let all = sessions
        sessions = [:]
        for (id, entry) in all where !gateHolders.contains(id) { try? await entry.connection.close() }
        for (id, entry) in all where gateHolders.contains(id) { try? await entry.connection.close() }
        gates = [:]
        gateHolders = []
    }
}
