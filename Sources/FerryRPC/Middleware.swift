import FerryProtocol
import Logging
import Metrics
import NIOCore
import Synchronization

/// A step every call passes through on its way to the handler, as in hummingbird: it may
/// look at or change the context, refuse the call by throwing (an ``RPCError`` becomes the
/// stream's status), or observe how the call ended (``next`` throws the status of a call
/// that did not end OK).
public protocol RPCMiddleware: Sendable {
    func handle(_ context: RPCContext, next: (RPCContext) async throws -> Void) async throws
}

extension Array where Element == any RPCMiddleware {
    /// The middleware in order (the first is outermost) around `endpoint`.
    func chain(_ endpoint: @escaping @Sendable (RPCContext) async throws -> Void) -> @Sendable (RPCContext) async throws -> Void {
        reversed().reduce(endpoint) { next, middleware in
            { context in try await middleware.handle(context, next: next) }
        }
    }
}

/// Authenticates the bearer token and checks the method's role, before the request message
/// is decoded: a caller without the right token learns nothing from the message's checks.
public struct AuthenticationMiddleware: RPCMiddleware {
    let tokens: TokenStore

    public init(tokens: TokenStore) {
        self.tokens = tokens
    }

    public func handle(_ context: RPCContext, next: (RPCContext) async throws -> Void) async throws {
        guard let required = context.method.requiredRole else { return try await next(context) }
        let caller: Principal
        switch tokens.authenticate(context.metadata["authorization"]) {
        case .success(let principal): caller = principal
        case .failure(let error):
            context.logger.debug("call refused", metadata: ["code": "\(error.code.rawValue)", "reason": "\(error.message)"])
            throw error
        }
        guard caller.role >= required else {
            context.logger.debug("call refused", metadata: ["code": "PERMISSION_DENIED", "principal": "\(caller.name)"])
            throw RPCError(.permissionDenied, "\(context.method.name) needs role \(required.rawValue); \(caller.name) has \(caller.role.rawValue)")
        }
        var context = context
        context.principal = caller
        context.logger[metadataKey: "principal"] = "\(caller.name)"
        try await next(context)
    }
}

/// Logs each call that did not end OK (at debug: failed calls are the client's business,
/// and a flood of bad calls must not flood the log), with its method, principal and code.
/// Handler errors that are not ``RPCError``s are logged at error level where they are mapped.
public struct LoggingMiddleware: RPCMiddleware {
    public init() {}

    public func handle(_ context: RPCContext, next: (RPCContext) async throws -> Void) async throws {
        let started = ContinuousClock.now
        do {
            try await next(context)
        } catch {
            let status = RPCError.status(for: error, logger: context.logger)
            context.logger.debug("call ended", metadata: [
                "stream": "\(context.stream)", "code": "\(status.code.rawValue)",
                "ms": "\((ContinuousClock.now - started).wholeMilliseconds)",
            ])
            throw status
        }
    }
}

/// Ends a call with DEADLINE_EXCEEDED when its `timeoutMs` passes, through its connection's
/// ``DeadlineTimer``.
public struct DeadlineMiddleware: RPCMiddleware {
    public init() {}

    public func handle(_ context: RPCContext, next: (RPCContext) async throws -> Void) async throws {
        guard let timeoutMs = context.timeoutMs else { return try await next(context) }
        context.deadlines.arm(context.control, timeoutMs: timeoutMs)
        defer { context.deadlines.disarm(context.control) }
        try await next(context)
    }
}

/// Counts calls by method and status code and times them, through swift-metrics:
/// `ferry_rpc_calls_total{method,code}` and `ferry_rpc_call_duration_seconds{method}`.
public struct MetricsMiddleware: RPCMiddleware {
    private let instruments = RPCInstruments()

    public init() {}

    public func handle(_ context: RPCContext, next: (RPCContext) async throws -> Void) async throws {
        let started = ContinuousClock.now
        var code = StatusCode.ok
        defer {
            instruments.record(method: context.method.name, code: code, duration: ContinuousClock.now - started)
        }
        do {
            try await next(context)
        } catch {
            code = (error as? RPCError)?.code ?? .internal
            throw error
        }
    }
}

/// The instruments of ``MetricsMiddleware``, made once per (method, code) rather than per call.
final class RPCInstruments: Sendable {
    private struct Key: Hashable {
        var method: String
        var code: StatusCode
    }
    private let counters = Mutex<[Key: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])

    func record(method: String, code: StatusCode, duration: Duration) {
        let key = Key(method: method, code: code)
        let counter = counters.withLock { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(label: "ferry_rpc_calls_total", dimensions: [("method", method), ("code", code.rawValue)])
            counters[key] = counter
            return counter
        }
        counter.increment()
        let timer = timers.withLock { timers in
            if let timer = timers[method] { return timer }
            let timer = Metrics.Timer(label: "ferry_rpc_call_duration_seconds", dimensions: [("method", method)], preferredDisplayUnit: .seconds)
            timers[method] = timer
            return timer
        }
        timer.recordNanoseconds(duration.wholeNanoseconds)
    }
}

extension RPCError {
    /// The status a thrown error ends a stream with. Errors other than ``RPCError`` are the
    /// server's fault: logged here, and INTERNAL for the client, which learns no more.
    static func status(for error: any Error, logger: Logger) -> RPCError {
        switch error {
        case let error as RPCError: return error
        case is CancellationError: return RPCError(.cancelled, "the call was cancelled")
        default:
            logger.error("handler failed", metadata: ["error": "\(error)"])
            return RPCError(.internal, "internal error")
        }
    }
}
