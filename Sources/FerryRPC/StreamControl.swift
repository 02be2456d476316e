import FerryProtocol
import Synchronization

/// How a stream ended early, from outside its handler.
enum StreamInterruption: Sendable {
    case cancelled(String)
    case reused(Int32)
    case draining
    /// The call's `timeoutMs` passed.
    case deadlineExceeded(Int64)
}

/// One open stream's cancellation signal: fired by a `cancel` frame, a reused stream id,
/// its deadline, or the end of a drain; awaited by the task that runs the handler.
final class StreamControl: Sendable {
    private struct State {
        var interruption: StreamInterruption?
        var waiter: CheckedContinuation<StreamInterruption, Never>?
        /// Set once the stream's status is sent; later writes are dropped.
        var closed = false
    }
    private let state = Mutex(State())

    func interrupt(_ reason: StreamInterruption) {
        let waiter = state.withLock { state -> CheckedContinuation<StreamInterruption, Never>? in
            guard state.interruption == nil else { return nil }
            state.interruption = reason
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: reason)
    }

    /// Suspends until interrupted (or returns at once if already). Cancelling the waiting
    /// task is how the winner of the race stops this waiter; its `.draining` is then ignored.
    func interrupted() async -> StreamInterruption {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<StreamInterruption, Never>) in
                let ready = state.withLock { state -> StreamInterruption? in
                    if let interruption = state.interruption { return interruption }
                    if Task.isCancelled { return .draining }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<StreamInterruption, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: .draining)
        }
    }

    /// Runs `write` unless the stream is finished, atomically with that check, so that no
    /// message can be queued after the stream's status.
    func writeIfOpen<T>(_ write: () -> T) -> T? {
        state.withLock { state in state.closed ? nil : write() }
    }

    /// Finishes the stream and queues its final frame with `write`; nil if it was finished.
    func close<T>(_ write: () -> T) -> T? {
        state.withLock { state in
            guard !state.closed else { return nil }
            state.closed = true
            return write()
        }
    }
}
