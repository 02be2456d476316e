import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs the system's programs, dropping root where the program refuses it.
///
/// PostgreSQL and PgBouncer will not run as root, and these machines (and CI) run as root,
/// so when the effective user is root every command is wrapped in `setpriv`, which execs the
/// program as the `postgres` system account (or `nobody` where there is none). Unlike
/// `runuser`, setpriv leaves no process in between, so a signal to the pid reaches the program.
public enum SystemProcess {
    /// Why a program could not be run or did not succeed. Carries the tail of its output.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
        public init(message: String) { self.message = message }
    }

    /// The account programs run as: `nil` when we are not root and keep our own.
    public static let unprivilegedAccount: (name: String, uid: uid_t, gid: gid_t)? = {
        guard geteuid() == 0 else { return nil }
        for name in ["postgres", "nobody"] {
            if let entry = getpwnam(name) {
                return (name, entry.pointee.pw_uid, entry.pointee.pw_gid)
            }
        }
        return nil
    }()

    /// The argument vector that runs `arguments` as the unprivileged account.
    public static func unprivileged(_ arguments: [String]) -> [String] {
        guard let account = unprivilegedAccount else { return arguments }
        return ["/usr/bin/setpriv", "--reuid=\(account.uid)", "--regid=\(account.gid)", "--init-groups", "--"] + arguments
    }

    /// Gives `path` to the unprivileged account (a no-op when we are not root).
    public static func handOver(_ path: String) throws {
        guard let account = unprivilegedAccount else { return }
        guard chown(path, account.uid, account.gid) == 0 else {
            throw Failure(message: "cannot give \(path) to user \(account.name): \(String(cString: strerror(errno)))")
        }
    }

    /// Starts `arguments` with output appended to `logFile` (or discarded), without waiting.
    public static func launch(
        _ arguments: [String],
        environment: [String: String]? = nil,
        directory: String? = nil,
        logFile: String? = nil
    ) throws -> ChildProcess {
        try ChildProcess.spawn(arguments, environment: environment, directory: directory, output: logFile)
    }

    /// Runs `arguments` to completion; a non-zero exit throws with the tail of `logFile`.
    public static func run(
        _ arguments: [String],
        environment: [String: String]? = nil,
        directory: String? = nil,
        logFile: String
    ) async throws {
        let process = try launch(arguments, environment: environment, directory: directory, logFile: logFile)
        let status = await process.wait()
        guard status == 0 else {
            let tail = (try? String(contentsOfFile: logFile, encoding: .utf8))?
                .split(separator: "\n").suffix(3).joined(separator: " | ") ?? ""
            let program = URL(fileURLWithPath: arguments.first { $0.hasPrefix("/") && !$0.hasSuffix("setpriv") } ?? arguments[0]).lastPathComponent
            throw Failure(message: "\(program) exited with status \(status): \(tail)")
        }
    }

    /// Starts a shell loop that outlives a killed owner (SIGKILL leaves no chance to clean
    /// up): once this process is gone it runs `cleanup` (a shell snippet that gets `$dir`
    /// and `arguments` as `$@`) and removes `directory`. Once `directory` is gone it just
    /// exits, so an orderly stop needs nothing more than removing the directory, or
    /// ``dismiss(_:)`` to end it at once.
    public static func launchGuardian(directory: String, cleanup: String, arguments: [String]) throws -> ChildProcess {
        let script = """
            trap '' INT HUP
            owner=$1; dir=$2; shift 2
            while kill -0 "$owner" 2>/dev/null && [ -d "$dir" ]; do sleep 1; done
            if [ -d "$dir" ]; then
              \(cleanup)
              rm -rf "$dir"
            fi
            """
        return try launch(["/bin/sh", "-c", script, "ferry-guardian", String(getpid()), directory] + arguments)
    }

    /// Ends a guardian whose owner cleaned up by itself.
    public static func dismiss(_ guardian: ChildProcess) async {
        guardian.signal(SIGKILL)
        _ = await guardian.wait()
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port`.
    public static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    public static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(message: "socket() failed: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw Failure(message: "bind() failed: \(String(cString: strerror(errno)))") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw Failure(message: "getsockname() failed: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
