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

    /// Starts a guardian: a shell that outlives a killed owner (SIGKILL leaves no chance to
    /// clean up) and then runs `cleanup` (a shell snippet that sees `$dir` and `arguments` as
    /// `$@`) and removes `directory`.
    ///
    /// It learns that this process is gone from a pipe: it blocks reading fd 3, whose write end
    /// only this process holds (close-on-exec, so no child inherits it), and the kernel closes
    /// that end when we die however we die. It runs in its own session with INT, HUP and TERM
    /// ignored, so neither a terminal's Ctrl-C nor a kill of our process group stops it early.
    /// ``dismiss(_:)`` ends it after an orderly clean-up.
    public static func launchGuardian(directory: String, cleanup: String, arguments: [String]) throws -> Guardian {
        // A socket pair serves as the pipe: it can be created close-on-exec atomically, so a
        // child spawned by another thread at this moment cannot inherit the write end.
        var ends: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw Failure(message: "socketpair() failed: \(String(cString: strerror(errno)))")
        }
        let script = """
            trap '' INT HUP TERM
            dir=$1; shift
            read -r _ <&3
            if [ -d "$dir" ]; then
              \(cleanup)
              rm -rf "$dir"
            fi
            """
        do {
            let process = try ChildProcess.spawn(
                ["/bin/sh", "-c", script, "ferry-guardian", directory] + arguments,
                environment: nil, directory: nil, output: nil, extraDescriptor: ends[0], newSession: true)
            close(ends[0])
            return Guardian(process: process, lifeline: ends[1])
        } catch {
            close(ends[0])
            close(ends[1])
            throw error
        }
    }

    /// A running guardian and the write end of its lifeline pipe.
    public struct Guardian: Sendable {
        public let process: ChildProcess
        let lifeline: Int32
    }

    /// Ends a guardian whose owner cleaned up by itself: closing the lifeline wakes it, and it
    /// finds the directory gone (or, if not, cleans up as it would after a crash).
    public static func dismiss(_ guardian: Guardian) async {
        close(guardian.lifeline)
        _ = await guardian.process.wait()
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
