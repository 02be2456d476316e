import FerryCore
import NIOCore
import NIOPosix
import Synchronization

/// A doorbell for a polling loop: `wait(upTo:)` returns when `signal()` is called (now or
/// since the last wait) or when the time is up, whichever comes first. Notifications ring
/// it; the timeout is the polling fallback that keeps things moving without them. A wake-up
/// may be spurious (callers re-check their condition).
public final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
        var timer: Scheduled<Void>?
    }
    private let state = Mutex(State())

    public init() {}

    public func signal() {
        let (waiter, timer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, Scheduled<Void>?) in
            guard let waiter = state.waiter else {
                state.pending = true
                return (nil, nil)
            }
            defer { state.waiter = nil; state.timer = nil }
            return (waiter, state.timer)
        }
        timer?.cancel()
        waiter?.resume()
    }

    /// Waits for a signal, at most `timeout`; returns at once when cancelled. One waiter at
    /// a time. The timer is an event-loop timer, freed when a signal comes first.
    public func wait(upTo timeout: Duration) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.pending || Task.isCancelled {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    state.timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: .nanoseconds(timeout.wholeNanoseconds)) { [weak self] in self?.signal() }
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            signal()
        }
    }
}
