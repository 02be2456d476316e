import ControlDatabase
import EmbeddedPostgres
import FerryRuntime
import Foundation
import Synchronization

/// A real PgBouncer in front of a test cluster, in the pool mode a test asks for.
public final class PgBouncer: Sendable {
    public let port: Int
    public let directory: String
    /// The running pgbouncer: another one after each ``restart(downtime:)``.
    private let process: Mutex<ChildProcess>
    private let guardian: SystemProcess.Guardian
    private let upstream: EmbeddedPostgres
    private let binary: String

    private init(port: Int, directory: String, process: ChildProcess, guardian: SystemProcess.Guardian, upstream: EmbeddedPostgres, binary: String) {
        self.port = port
        self.directory = directory
        self.process = Mutex(process)
        self.guardian = guardian
        self.upstream = upstream
        self.binary = binary
    }

    /// The URL of `database` through this pooler.
    public func url(database: String) throws -> DatabaseURL {
        var url = try DatabaseURL(parsing: upstream.url(database: database))
        url.port = port
        return url
    }

    /// The pgbouncer binary, if installed.
    public static var binary: String? {
        ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    public static func start(in upstream: EmbeddedPostgres, poolMode: String = "transaction", poolSize: Int = 20) async throws -> PgBouncer {
        guard let binary else {
            throw SystemProcess.Failure(message: "pgbouncer is not installed (scripts/install-deps installs it)")
        }
        var template = Array((FileManager.default.temporaryDirectory.path + "/ferry-pgbouncer-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemProcess.Failure(message: "mkdtemp failed") }
        let directory = String(cString: made)
        try SystemProcess.handOver(directory)
        let port = try SystemProcess.freeLoopbackPort()
        let configuration = """
            [databases]
            * = host=127.0.0.1 port=\(upstream.port)

            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(port)
            unix_socket_dir =
            auth_type = scram-sha-256
            auth_file = \(directory)/userlist.txt
            pool_mode = \(poolMode)
            default_pool_size = \(poolSize)
            max_client_conn = 1000
            logfile = \(directory)/pgbouncer.log
            server_reset_query =
            ignore_startup_parameters = extra_float_digits

            """
        try configuration.write(toFile: directory + "/pgbouncer.ini", atomically: false, encoding: .utf8)
        try "\"\(upstream.user)\" \"\(upstream.password)\"\n".write(toFile: directory + "/userlist.txt", atomically: false, encoding: .utf8)
        try SystemProcess.handOver(directory + "/pgbouncer.ini")
        try SystemProcess.handOver(directory + "/userlist.txt")

        // The guardian kills whichever pgbouncer the pid file names: a restart starts another.
        let guardian = try SystemProcess.launchGuardian(
            directory: directory, cleanup: #"[ -f "$dir/bouncer.pid" ] && kill -TERM "$(cat "$dir/bouncer.pid")" 2>/dev/null"#, arguments: [])
        let process: ChildProcess
        do {
            process = try launch(binary, directory)
        } catch {
            await SystemProcess.dismiss(guardian)
            throw error
        }
        let bouncer = PgBouncer(port: port, directory: directory, process: process, guardian: guardian, upstream: upstream, binary: binary)
        do {
            try await bouncer.waitUntilListening(process)
        } catch {
            await bouncer.stop()
            throw error
        }
        return bouncer
    }

    private static func launch(_ binary: String, _ directory: String) throws -> ChildProcess {
        let process = try SystemProcess.launch(
            SystemProcess.unprivileged([binary, directory + "/pgbouncer.ini"]),
            directory: directory, logFile: directory + "/stdout.log")
        try String(process.pid).write(toFile: directory + "/bouncer.pid", atomically: true, encoding: .utf8)
        return process
    }

    /// Returns once `process` accepts TCP connections on the port.
    private func waitUntilListening(_ process: ChildProcess) async throws {
        for _ in 0..<100 {
            if !process.isRunning { break }
            if SystemProcess.canConnect(port: port) { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        let log = (try? String(contentsOfFile: directory + "/pgbouncer.log", encoding: .utf8)) ?? ""
        throw SystemProcess.Failure(message: "pgbouncer did not start: \(log.suffix(500))")
    }

    /// Stops PgBouncer (SIGTERM: PgBouncer 1.18, which scripts/install-deps installs, shuts down
    /// at once, closing every client and server connection), waits `downtime` with nothing
    /// listening on the port, and starts it again on the same port with the same configuration:
    /// a pooler restart, for tests. Clients must reconnect; their sessions' state is gone.
    public func restart(downtime: Duration) async throws {
        let old = process.withLock { $0 }
        old.signal(SIGTERM)
        _ = await old.wait()
        try await Task.sleep(for: downtime)
        let started = try Self.launch(binary, directory)
        process.withLock { $0 = started }
        try await waitUntilListening(started)
    }

    private let stopped = Mutex(false)

    /// Stops PgBouncer and its guardian. Idempotent: the guardian's lifeline descriptor is
    /// closed once only (closing a number twice could close whatever reused it).
    public func stop() async {
        guard stopped.withLock({ wasStopped in
            defer { wasStopped = true }
            return !wasStopped
        }) else { return }
        let process = process.withLock { $0 }
        process.signal(SIGTERM)
        _ = await process.wait()
        await SystemProcess.dismiss(guardian)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
