import Foundation

// Readings of the benchmarks: `ferry bench rpc`/`bench jobs`, and the grpc-swift-2 reference's
// load generator (bench/grpc-reference links this file), so both sides are measured alike.

/// The nearest-rank percentile `p` (0…100] of sorted samples; nil when there are none.
func nearestRank<T>(_ sorted: [T], _ p: Double) -> T? {
    guard !sorted.isEmpty else { return nil }
    return sorted[min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1))]
}

/// Resident memory of a local process, from Linux's /proc.
enum ServerMemory {
    /// Resets the process's peak RSS (VmHWM) to its current RSS (`clear_refs` value 5).
    static func resetPeak(pid: Int32) -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/proc/\(pid)/clear_refs") else { return false }
        defer { try? handle.close() }
        return (try? handle.write(contentsOf: Data("5".utf8))) != nil
    }

    static func read(pid: Int32) -> (peakKiB: Int, currentKiB: Int)? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        func field(_ name: String) -> Int? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
            return line.split(separator: " ").compactMap { Int($0) }.first
        }
        guard let peak = field("VmHWM"), let current = field("VmRSS") else { return nil }
        return (peak, current)
    }
}

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
