import ArgumentParser
import FerryClient
import FerryProtocol
import Foundation
import Synchronization

/// Follows a job to its end with `client.watchJob` (which reconnects and resumes by itself),
/// printing it as `format` and the terminal's kind asks, then exits with the job's status.
func follow(_ jobID: String, client: FerryClient, format: OutputFormat, timeout: Duration) async throws {
    let display: any WatchDisplay
    if format == .json {
        display = NDJSONDisplay()
    } else if isatty(STDOUT_FILENO) == 1 {
        display = LiveDisplay()
    } else {
        display = LineDisplay()
    }
    let notices = NoticeBox()
    var job = Job()
    let events = client.watchJob(jobID) { address, after in
        notices.post("connection lost; reconnected to \(address), resuming after event \(after)")
    }
    for try await event in events {
        for notice in notices.take() { display.notice(notice) }
        switch event.type {
        case .snapshot: job = event.job
        case .progress: job.progress = event.progress
        case .status:
            job.status = event.status
            if event.hasError { job.error = event.error } else { job.clearError() }
        default: break
        }
        // A job that had already ended needs no replay of its history on a terminal.
        if event.type == .snapshot, job.status.isTerminal, format != .json {
            break
        }
        try display.show(event, job: job)
        // Lines reach a pipe as they are printed, not when a buffer fills.
        flushOutput()
    }
    // The exit status is the terminal status the watch saw; the whole job (result, times) is
    // read once more for the last line, and the figures seen so far stand in if that fails.
    let final = (try? await client.getJob(jobID, timeout: timeout)).flatMap { $0.status.isTerminal ? $0 : nil } ?? job
    display.finish(final)
    let status = ExitStatus(job: job.status.isTerminal ? job.status : final.status)
    if status != .success { throw ExitCode(status.rawValue) }
}

/// Reconnection notices, posted by the watch's callback and printed by the display between events.
final class NoticeBox: Sendable {
    private let notices = Mutex<[String]>([])
    func post(_ text: String) { notices.withLock { $0.append(text) } }
    func take() -> [String] {
        notices.withLock { notices in
            defer { notices = [] }
            return notices
        }
    }
}

protocol WatchDisplay {
    func show(_ event: JobEvent, job: Job) throws
    func notice(_ text: String)
    func finish(_ job: Job)
}

/// `-o json`: each event as one line of JSON (NDJSON); notices go to stderr.
struct NDJSONDisplay: WatchDisplay {
    func show(_ event: JobEvent, job: Job) throws { try printJSON(event) }
    func notice(_ text: String) { FileHandle.standardError.write(Data("ferry: \(text)\n".utf8)) }
    func finish(_ job: Job) {}
}

/// A pipe: one timestamped line per event (the server's time of the event).
struct LineDisplay: WatchDisplay {
    func show(_ event: JobEvent, job: Job) throws {
        let head = "\(Date(timeIntervalSince1970: event.at.seconds1970).rfc3339) \(JobText.short(job.id.isEmpty ? event.jobID : job.id))"
        switch event.type {
        case .snapshot:
            print(printable("\(head) \(job.status.name) \(job.kind.label) \(JobText.route(job)): \(JobText.progress(job.progress, kind: job.kind))"))
        case .progress:
            var line = "\(head) \(job.status.name) \(JobText.progress(event.progress, kind: job.kind))"
            if !event.progress.inFlight.isEmpty { line += " | in flight: \(event.progress.inFlight.joined(separator: ", "))" }
            print(printable(line))
        case .status:
            print(printable("\(head) \(event.status.name)" + (event.hasError ? " \(event.error.code): \(event.error.message)" : "")))
        default:
            break
        }
    }

    func notice(_ text: String) { print("\(Date().rfc3339) ferry: \(text)") }

    func finish(_ job: Job) { print(printable(JobText.outcome(job))) }
}

/// A terminal: a few lines redrawn in place (bar, counts, rate, ETA, items in flight), then
/// the verified result.
final class LiveDisplay: WatchDisplay {
    private var drawn = 0
    private var samples: [(at: ContinuousClock.Instant, bytes: Int64)] = []
    private var firstProgress: ContinuousClock.Instant?

    /// The terminal's width now (it may have been resized since the last redraw).
    private var width: Int {
        var size = winsize()
        return ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 20 ? Int(size.ws_col) : 100
    }

    func show(_ event: JobEvent, job: Job) throws {
        let now = ContinuousClock.now
        if job.progress.bytesCopied > 0 || job.progress.tablesDone > 0 {
            if firstProgress == nil { firstProgress = now }
            samples.append((now, job.progress.bytesCopied))
            samples.removeAll { now - $0.at > .seconds(10) }
        }
        redraw(lines(job, now: now))
    }

    func notice(_ text: String) {
        clear()
        print("ferry: \(text)")
    }

    func finish(_ job: Job) {
        redraw(lines(job, now: .now))
        drawn = 0
        print(printable(JobText.outcome(job)))
        flushOutput()
    }

    private func lines(_ job: Job, now: ContinuousClock.Instant) -> [String] {
        let progress = job.progress
        var head = "\(job.kind.label) \(JobText.short(job.id))  \(JobText.route(job))  \(job.status.name)"
        if !progress.phase.isEmpty { head += " · \(progress.phase)" }
        let (done, total, unit) = JobText.counts(progress, kind: job.kind)
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : (job.status == .succeeded ? 1 : 0)
        let filled = Int((fraction * 24).rounded(.down))
        var figures = ["[" + String(repeating: "█", count: filled) + String(repeating: "░", count: 24 - filled) + "]"]
        figures.append(total > 0 ? "\(done)/\(total) \(unit)" : "-/- \(unit)")
        figures.append("\(grouped(progress.rowsCopied)) rows")
        figures.append(byteSize(progress.bytesCopied))
        if let first = samples.first, let last = samples.last, last.at > first.at, last.bytes > first.bytes, !job.status.isTerminal {
            let seconds = Double((last.at - first.at).components.seconds) + Double((last.at - first.at).components.attoseconds) / 1e18
            figures.append("\(byteSize(Int64(Double(last.bytes - first.bytes) / seconds)))/s")
        }
        if let start = firstProgress, fraction > 0, fraction < 1, !job.status.isTerminal {
            let elapsed = now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            figures.append("ETA \(shortDuration(seconds * (1 - fraction) / fraction))")
        }
        var result = [head, figures.joined(separator: "  ")]
        if !progress.inFlight.isEmpty, !job.status.isTerminal {
            result.append("in flight: \(progress.inFlight.joined(separator: ", "))")
        }
        let width = self.width
        return result.map(printable).map { $0.count > width - 1 ? String($0.prefix(width - 2)) + "…" : $0 }
    }

    /// Moves up over the lines drawn last time and clears them.
    private func clear() {
        if drawn > 0 { print("\u{1B}[\(drawn)A\r\u{1B}[J", terminator: "") }
        drawn = 0
    }

    private func redraw(_ lines: [String]) {
        clear()
        for line in lines { print(line) }
        drawn = lines.count
        flushOutput()
    }
}

extension Date {
    /// RFC 3339 in UTC with milliseconds.
    var rfc3339: String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: self)
    }
}

/// `text` with control characters shown as escapes: names come from the databases, and a
/// table named with a newline or an escape sequence must not break the display or the
/// terminal.
func printable(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
    return String(text.unicodeScalars.map { scalar in
        scalar.properties.generalCategory == .control ? scalar.escaped(asASCII: true) : String(scalar)
    }.joined())
}

/// Pushes what was printed to the terminal or pipe now (stdio buffers a pipe's output).
func flushOutput() {
    fflush(nil)
}
