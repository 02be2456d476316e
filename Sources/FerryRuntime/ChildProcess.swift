import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawn` and reaped with `waitpid`.
///
/// Foundation's `Process` reaps children from a SIGCHLD dispatch source, which proved
/// unreliable inside a test runner that starts many children from many threads (exited
/// children stayed zombies and `waitUntilExit` never returned). This type does the few
/// things Ferry needs directly: signal dispositions reset to default in the child, output to
/// a file, and an async `wait()`.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    private let exitStatus = Mutex<Int32?>(nil)

    private init(pid: pid_t) { self.pid = pid }

    /// - Parameters:
    ///   - extraDescriptor: a descriptor of ours the child gets as its fd 3.
    ///   - newSession: start the child in a session of its own (no terminal signals, and a
    ///     kill of our process group does not reach it).
    static func spawn(_ arguments: [String], environment: [String: String]?, directory: String?, output: String?,
                      extraDescriptor: Int32? = nil, newSession: Bool = false) throws -> ChildProcess {
        precondition(!arguments.isEmpty)
        var arguments = arguments
        if let directory {
            // Glibc's addchdir file action is not visible to Swift; a shell exec does the same.
            arguments = ["/bin/sh", "-c", #"cd "$0" && exec "$@""#, directory] + arguments
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let target = output ?? "/dev/null"
        posix_spawn_file_actions_addopen(&actions, 1, target, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if let extraDescriptor {
            posix_spawn_file_actions_adddup2(&actions, extraDescriptor, 3)
        }
        // Nothing else of ours may reach the child. NIO does not open its sockets close-on-exec,
        // so without this a postmaster (which outlives us) or a guardian would inherit every
        // connection we have open, and a connection we close would stay open in the child.
        closeInheritedDescriptors(&actions, from: extraDescriptor == nil ? 3 : 4)

        // NIO and swift-service-lifecycle ignore or block signals in this process; a child
        // must start with the defaults, or `pg_ctl stop` and SIGTERM would not work on it.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2] {
            sigaddset(&defaults, signal)
        }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newSession { flags |= 0x80 }  // POSIX_SPAWN_SETSID (glibc 2.26+), not imported by name
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let environmentPairs = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let result = withCStrings(arguments) { argv in
            withCStrings(environmentPairs) { envp in
                posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
            }
        }
        guard result == 0 else {
            throw SystemProcess.Failure(message: "cannot start \(arguments[0]): \(String(cString: strerror(result)))")
        }
        return ChildProcess(pid: pid)
    }

    /// Sends `signal` unless the child was already reaped. Reaping happens only under the
    /// same lock, so the pid cannot have been recycled for another process meanwhile.
    public func signal(_ signal: Int32) {
        exitStatus.withLock { status in
            if status == nil { kill(pid, signal) }
        }
    }

    /// Whether the child is still running (reaps it if it just exited).
    public var isRunning: Bool {
        exitStatus.withLock { status in
            guard status == nil else { return false }
            return !Self.reap(pid, into: &status)
        }
    }

    /// Waits for the child to exit; the exit code, or 128 + signal number.
    ///
    /// It polls (every 10 ms at first, backing off to 100 ms) instead of parking a thread in
    /// waitpid: a blocking wait per child meant a thread per child, and with many children the
    /// dispatch thread pool behind Swift concurrency was seen to stall. Reaping happens only
    /// under the lock, so concurrent waiters all see the one real status and `signal` never
    /// hits a recycled pid.
    public func wait() async -> Int32 {
        var interval = Duration.milliseconds(10)
        while true {
            if let status = exitStatus.withLock({ status -> Int32? in
                if status == nil { _ = Self.reap(pid, into: &status) }
                return status
            }) {
                return status
            }
            try? await Task.sleep(for: interval)
            interval = min(interval * 2, .milliseconds(100))
        }
    }

    /// Reaps the child if it exited; true when it did (and `status` is set).
    private static func reap(_ pid: pid_t, into status: inout Int32?) -> Bool {
        var raw: Int32 = 0
        var reaped: pid_t
        repeat { reaped = waitpid(pid, &raw, WNOHANG) } while reaped == -1 && errno == EINTR
        guard reaped == pid else { return false }
        status = decode(raw)
        return true
    }

    private static func decode(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which Swift's Glibc module does
/// not import; looked up at run time so older systems fall back to listing /proc/self/fd.
private let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

private func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t, from lowest: Int32) {
    if let addCloseFrom, addCloseFrom(&actions, lowest) == 0 { return }
    let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    for descriptor in open.compactMap(Int32.init) where descriptor >= lowest {
        posix_spawn_file_actions_addclose(&actions, descriptor)
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
