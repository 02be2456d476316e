import FerryProtocol
import NIOCore
import Synchronization

/// How a stream ended early, from outside its handler.
enum StreamInterruption: Sendable {
    case cancelled(String)
    case reused(Int32)
    case draining
    /// The call's `timeoutMs` passed.
    case deadlineExceeded(Int64)

    var status: RPCError {
        switch self {
        case .cancelled(let reason): RPCError(.cancelled, reason)
        case .reused(let stream): RPCError(.invalidArgument, "stream id \(stream) was reused while the stream was open")
        case .draining: RPCError(.unavailable, "the server closed the connection before the call finished")
        case .deadlineExceeded(let timeoutMs): RPCError(.deadlineExceeded, "deadline of \(timeoutMs) ms exceeded")
        }
    }
}

/// One open stream's outcome: whichever comes first of its handler returning and an
/// interruption (a `cancel` frame, a reused id, its deadline, the end of a drain) decides its
/// status. The task serving the stream waits on it.
final class StreamControl: Sendable {
    enum Outcome: Sendable {
        case handlerReturned(RPCError?)
        case interrupted(StreamInterruption)
    }

    let id: Int32

    private struct State {
        var outcome: Outcome?
        var waiter: CheckedContinuation<Outcome, Never>?
        /// A unary handler's response, written together with the status.
        var unaryResponse: ByteBuffer?
    }
    private let state = Mutex(State())

    init(id: Int32) {
        self.id = id
    }

    func interrupt(_ reason: StreamInterruption) {
        decide(.interrupted(reason))
    }

    func handlerReturned(_ error: RPCError?) {
        decide(.handlerReturned(error))
    }

    private func decide(_ outcome: Outcome) {
        let waiter = state.withLock { state -> CheckedContinuation<Outcome, Never>? in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: outcome)
    }

    /// Suspends until the outcome is decided. Cancelling the waiting task (the connection is
    /// gone) decides it as `.draining`.
    func outcome() async -> Outcome {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
                let ready = state.withLock { state -> Outcome? in
                    if let outcome = state.outcome { return outcome }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            interrupt(.draining)
        }
    }

    func setUnaryResponse(_ response: ByteBuffer) {
        state.withLock { $0.unaryResponse = response }
    }

    func takeUnaryResponse() -> ByteBuffer? {
        state.withLock { state in
            defer { state.unaryResponse = nil }
            return state.unaryResponse
        }
    }
}
