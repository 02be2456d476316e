import NIOCore
import Synchronization

/// The deadlines of one connection's calls, on one event-loop timer set for the earliest.
///
/// A timer per call would cost two cross-thread hops to the event loop per call (schedule
/// and cancel) — measured at high call rates as a large share of the server's CPU. Calls
/// mostly share one timeout, so each new deadline is later than the one the timer waits for,
/// and arming a call is an append under a lock. A `Task.sleep` per call is no better: a
/// cancelled sleep holds its memory until its deadline.
final class DeadlineTimer: Sendable {
    /// Deadlines beyond a year are held to a year (TimeAmount counts nanoseconds in an Int64).
    static let longestDeadlineMs: Int64 = 365 * 24 * 3600 * 1000

    private struct Entry {
        var deadline: NIODeadline
        var control: StreamControl
        var timeoutMs: Int64
    }

    private struct State {
        /// At most one per running call, so a linear search is cheap.
        var entries: [Entry] = []
        var scheduled: (at: NIODeadline, task: Scheduled<Void>)?
        var stopped = false
    }

    private let eventLoop: any EventLoop
    private let state = Mutex(State())

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Interrupts `control` with DEADLINE_EXCEEDED once `timeoutMs` have passed, unless disarmed.
    func arm(_ control: StreamControl, timeoutMs: Int64) {
        let deadline = NIODeadline.now() + .milliseconds(min(timeoutMs, Self.longestDeadlineMs))
        state.withLock { state in
            guard !state.stopped else { return }
            state.entries.append(Entry(deadline: deadline, control: control, timeoutMs: timeoutMs))
            if state.scheduled.map({ deadline < $0.at }) ?? true { schedule(&state, at: deadline) }
        }
    }

    /// The call ended. The timer is left as it is: if it waits for this call, it finds nothing
    /// due and moves on to the next deadline.
    func disarm(_ control: StreamControl) {
        state.withLock { state in
            if let index = state.entries.firstIndex(where: { $0.control === control }) {
                state.entries.swapAt(index, state.entries.count - 1)
                state.entries.removeLast()
            }
        }
    }

    /// The connection is gone.
    func stop() {
        state.withLock { state in
            state.stopped = true
            state.entries = []
            state.scheduled?.task.cancel()
            state.scheduled = nil
        }
    }

    // Scheduling never runs a callback inline, so it is safe under the lock.
    private func schedule(_ state: inout State, at deadline: NIODeadline) {
        state.scheduled?.task.cancel()
        let task = eventLoop.scheduleTask(deadline: deadline) { [self] in fire() }
        state.scheduled = (deadline, task)
    }

    private func fire() {
        let due = state.withLock { state -> [Entry] in
            state.scheduled = nil
            let now = NIODeadline.now()
            var due: [Entry] = []
            state.entries.removeAll { entry in
                guard entry.deadline <= now else { return false }
                due.append(entry)
                return true
            }
            if let next = state.entries.min(by: { $0.deadline < $1.deadline }) { schedule(&state, at: next.deadline) }
            return due
        }
        for entry in due { entry.control.interrupt(.deadlineExceeded(entry.timeoutMs)) }
    }
}
