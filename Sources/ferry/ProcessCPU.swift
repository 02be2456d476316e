import Foundation

/// CPU time of a local process, from Linux's /proc: what `ferry bench rpc --server-pid` reports
/// per call (client and server share the machine's cores, so CPU per call is the fair figure).
enum ProcessCPU {
    /// The process's user + system CPU time so far, in seconds: fields 14 and 15 (utime, stime,
    /// in clock ticks) of /proc/PID/stat. Fields are counted after the last ')', since the
    /// command name (field 2) may hold spaces and parentheses. Nil when it cannot be read.
    static func seconds(pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // The first field after ')' is field 3 (state).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        guard ticks > 0 else { return nil }
        return Double(user + system) / Double(ticks)
    }

    /// The process's CPU seconds between `from` and `until`, sleeping until each; nil without a
    /// pid or when /proc cannot be read.
    static func window(pid: Int32?, from: ContinuousClock.Instant, until: ContinuousClock.Instant, clock: ContinuousClock) async -> Double? {
        guard let pid else { return nil }
        try? await Task.sleep(until: from, clock: clock)
        guard let start = seconds(pid: pid) else { return nil }
        try? await Task.sleep(until: until, clock: clock)
        guard let end = seconds(pid: pid) else { return nil }
        return end - start
    }

    /// `server CPU: X µs/call (Y s user+sys over the measured window, pid P)`.
    static func line(_ seconds: Double?, calls: Int, pid: Int32) -> String {
        guard let seconds else { return "server CPU: cannot read /proc/\(pid)/stat" }
        let perCall = calls > 0 ? String(format: "%.1f", seconds * 1e6 / Double(calls)) : "-"
        return String(format: "server CPU: %@ µs/call (%.2f s user+sys over the measured window, pid %d)", perCall, seconds, pid)
    }
}
