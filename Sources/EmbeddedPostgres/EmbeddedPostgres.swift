import FerryRuntime
import Foundation
import Logging

/// A throwaway PostgreSQL cluster: created with `initdb` in a fresh temporary directory,
/// started with `pg_ctl` on a free loopback port, and removed by ``stop()``.
///
/// It is `ferryd serve`'s embedded default and the tests' real server. TCP logins need the
/// generated password (SCRAM); the Unix socket sits inside the cluster's private directory.
///
/// If the owning process dies without calling ``stop()`` (SIGKILL), a small guardian process
/// notices within a second, stops the cluster and removes its directory, so nothing is left
/// behind either way.
public final class EmbeddedPostgres: Sendable {
    /// The superuser the cluster is created with.
    public let user: String
    /// The superuser's password (random per cluster).
    public let password: String
    public let host = "127.0.0.1"
    public let port: Int
    /// The temporary directory holding the data directory, socket and logs.
    public let baseDirectory: String
    public let binaries: PostgresBinaries
    private let guardian: SystemProcess.Guardian
    private let logger: Logger

    public var dataDirectory: String { baseDirectory + "/data" }
    public var serverLog: String { baseDirectory + "/postgres.log" }

    private init(user: String, password: String, port: Int, baseDirectory: String, binaries: PostgresBinaries, guardian: SystemProcess.Guardian, logger: Logger) {
        self.user = user
        self.password = password
        self.port = port
        self.baseDirectory = baseDirectory
        self.binaries = binaries
        self.guardian = guardian
        self.logger = logger
    }

    /// A `postgres://` URL (with password) for `database` on this cluster.
    public func url(database: String) -> String {
        "postgres://\(user):\(password)@\(host):\(port)/\(database)?sslmode=disable"
    }

    /// Creates and starts a cluster, with `database` created in it.
    ///
    /// - Parameters:
    ///   - parentDirectory: where the temporary directory goes (default: the system's temp dir).
    ///   - database: a database to create besides `postgres`.
    ///   - maxConnections: the server's `max_connections`.
    public static func start(
        parentDirectory: String? = nil,
        database: String? = nil,
        maxConnections: Int = 300,
        logger: Logger = Logger(label: "ferry.embedded-postgres")
    ) async throws -> EmbeddedPostgres {
        let binaries = try PostgresBinaries.locate()
        let parent = parentDirectory ?? FileManager.default.temporaryDirectory.path
        try checkEnterable(parent)
        var template = Array((parent + "/ferry-pg-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw SystemProcess.Failure(message: "cannot create a temporary directory under \(parent): \(String(cString: strerror(errno)))")
        }
        let base = String(cString: made)
        // The guardian comes first, so even a kill during initdb or start-up leaves nothing.
        let guardian: SystemProcess.Guardian
        do {
            guardian = try SystemProcess.launchGuardian(
                directory: base,
                cleanup: #"[ -f "$dir/data/postmaster.pid" ] && "$@" stop -D "$dir/data" -m immediate -w -t 30 -s >/dev/null 2>&1"#,
                arguments: SystemProcess.unprivileged([binaries.pgCtl]))
        } catch {
            try? FileManager.default.removeItem(atPath: base)
            throw error
        }
        do {
            return try await start(in: base, binaries: binaries, guardian: guardian, database: database, maxConnections: maxConnections, logger: logger)
        } catch {
            await stopServer(base: base, binaries: binaries, mode: "immediate")
            try? FileManager.default.removeItem(atPath: base)
            await SystemProcess.dismiss(guardian)
            throw error
        }
    }

    /// When we are root the cluster runs as another account, which must be able to enter
    /// `parent`; say so plainly instead of letting initdb fail on a permission error.
    private static func checkEnterable(_ parent: String) throws {
        guard let account = SystemProcess.unprivilegedAccount else { return }
        var info = stat()
        guard stat(parent, &info) == 0 else {
            throw SystemProcess.Failure(message: "the directory \(parent) for the embedded cluster does not exist")
        }
        let enterable = info.st_uid == account.uid ? info.st_mode & S_IXUSR != 0
            : info.st_gid == account.gid ? info.st_mode & S_IXGRP != 0
            : info.st_mode & S_IXOTH != 0
        guard enterable else {
            throw SystemProcess.Failure(message: "the embedded cluster runs as user \(account.name), who cannot enter \(parent) (chmod o+x it, or choose another --embedded-dir)")
        }
    }

    /// Stops a server in `base` if one is (or may be) running.
    private static func stopServer(base: String, binaries: PostgresBinaries, mode: String) async {
        guard FileManager.default.fileExists(atPath: base + "/data/postmaster.pid") else { return }
        try? await SystemProcess.run(SystemProcess.unprivileged([
            binaries.pgCtl, "stop", "-D", base + "/data", "-m", mode, "-w", "-t", "60", "-s",
        ]), directory: base, logFile: base + "/setup.log")
    }

    private static func start(in base: String, binaries: PostgresBinaries, guardian: SystemProcess.Guardian, database: String?, maxConnections: Int, logger: Logger) async throws -> EmbeddedPostgres {
        try SystemProcess.handOver(base)
        let user = "ferry"
        let password = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let setupLog = base + "/setup.log"
        let passwordFile = base + "/pwfile"
        _ = FileManager.default.createFile(atPath: passwordFile, contents: Data(password.utf8), attributes: [.posixPermissions: 0o600])
        try SystemProcess.handOver(passwordFile)

        logger.info("creating a throwaway PostgreSQL cluster", metadata: ["directory": "\(base)", "bin": "\(binaries.directory)"])
        try await SystemProcess.run(SystemProcess.unprivileged([
            binaries.initdb, "-D", base + "/data", "-U", user, "--pwfile=" + passwordFile,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
        ]), directory: base, logFile: setupLog)
        try? FileManager.default.removeItem(atPath: passwordFile)

        // A port found free can be taken before postgres binds it; try a few.
        var lastError: (any Error)?
        for _ in 0..<5 {
            let port = try SystemProcess.freeLoopbackPort()
            try writeConfiguration(base: base, port: port, maxConnections: maxConnections)
            do {
                try await SystemProcess.run(SystemProcess.unprivileged([
                    binaries.pgCtl, "start", "-D", base + "/data", "-l", base + "/postgres.log", "-w", "-t", "60", "-s",
                ]), directory: base, logFile: setupLog)
            } catch {
                lastError = error
                // A start that timed out may have left a postmaster booting: stop it first.
                await stopServer(base: base, binaries: binaries, mode: "immediate")
                logger.warning("PostgreSQL did not start, retrying on another port", metadata: ["port": "\(port)", "error": "\(error)"])
                continue
            }
            let cluster = EmbeddedPostgres(user: user, password: password, port: port, baseDirectory: base, binaries: binaries, guardian: guardian, logger: logger)
            if let database { try await cluster.createDatabase(database) }
            logger.info("throwaway PostgreSQL cluster is up", metadata: ["port": "\(port)", "directory": "\(base)"])
            return cluster
        }
        throw lastError ?? SystemProcess.Failure(message: "PostgreSQL did not start")
    }

    private static func writeConfiguration(base: String, port: Int, maxConnections: Int) throws {
        let configuration = """

            # Written by Ferry's embedded cluster: loopback only, and durability traded for
            # speed, since the cluster is thrown away when its owner stops.
            listen_addresses = '127.0.0.1'
            port = \(port)
            unix_socket_directories = '\(base)'
            max_connections = \(maxConnections)
            fsync = off
            synchronous_commit = off
            full_page_writes = off
            log_min_messages = warning

            """
        let path = base + "/data/postgresql.auto.conf"
        try configuration.write(toFile: path, atomically: false, encoding: .utf8)
        try SystemProcess.handOver(path)
    }

    /// How ``stopServer(_:)`` shuts the server down (`pg_ctl stop -m`).
    public enum ShutdownMode: String, Sendable {
        /// Every client's session is terminated at once (SQLSTATE 57P01), then a checkpoint.
        case fast
        /// The postmaster and its backends quit without a checkpoint, as in a crash; the next
        /// start recovers from the WAL. This cluster runs with `synchronous_commit = off`, so
        /// commits acknowledged in the last moments before may be lost, which a production
        /// server would not do.
        case immediate
    }

    /// Stops the server and keeps its data directory, so ``startServer()`` can bring the same
    /// data back on the same port: an instance going away, for tests. ``stop()`` still removes
    /// everything afterwards, whether or not the server was started again.
    public func stopServer(_ mode: ShutdownMode) async throws {
        try await SystemProcess.run(SystemProcess.unprivileged([
            binaries.pgCtl, "stop", "-D", dataDirectory, "-m", mode.rawValue, "-w", "-t", "60", "-s",
        ]), directory: baseDirectory, logFile: baseDirectory + "/setup.log")
    }

    /// Starts the server again after ``stopServer(_:)``, on the same port with the same data
    /// (after an immediate stop, once crash recovery is done). Fails if another process took
    /// the port meanwhile.
    public func startServer() async throws {
        try await SystemProcess.run(SystemProcess.unprivileged([
            binaries.pgCtl, "start", "-D", dataDirectory, "-l", serverLog, "-w", "-t", "60", "-s",
        ]), directory: baseDirectory, logFile: baseDirectory + "/setup.log")
    }

    /// Stops the server (fast: every client's session is terminated at once), waits
    /// `downtime`, and starts it again with the same data on the same port: an outage, for
    /// tests. Not an immediate stop: this cluster runs with `synchronous_commit = off`, so a
    /// crash would lose commits already acknowledged, which a production server would not.
    public func restart(downtime: Duration) async throws {
        try await stopServer(.fast)
        try await Task.sleep(for: downtime)
        try await startServer()
    }

    /// Creates a database owned by the superuser.
    public func createDatabase(_ name: String) async throws {
        try await SystemProcess.run(SystemProcess.unprivileged([
            binaries.createdb, "-h", baseDirectory, "-p", String(port), "-U", user, name,
        ]), directory: baseDirectory, logFile: baseDirectory + "/setup.log")
    }

    /// Stops the server (fast shutdown: sessions are ended) and deletes the directory.
    ///
    /// If the fast stop fails, an immediate stop is tried; if that fails too, the directory
    /// and the guardian stay, so the server is still cleaned up when this process exits.
    public func stop() async throws {
        if FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
            do {
                try await SystemProcess.run(SystemProcess.unprivileged([
                    binaries.pgCtl, "stop", "-D", dataDirectory, "-m", "fast", "-w", "-t", "60", "-s",
                ]), directory: baseDirectory, logFile: baseDirectory + "/setup.log")
            } catch {
                logger.warning("fast stop failed, stopping immediately", metadata: ["error": "\(error)"])
                try await SystemProcess.run(SystemProcess.unprivileged([
                    binaries.pgCtl, "stop", "-D", dataDirectory, "-m", "immediate", "-w", "-t", "60", "-s",
                ]), directory: baseDirectory, logFile: baseDirectory + "/setup.log")
            }
        }
        try FileManager.default.removeItem(atPath: baseDirectory)
        await SystemProcess.dismiss(guardian)
        logger.info("throwaway PostgreSQL cluster removed", metadata: ["directory": "\(baseDirectory)"])
    }
}
