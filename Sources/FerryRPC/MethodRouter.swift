import FerryProtocol
import Logging
import NIOCore
import SwiftProtobuf

/// What a handler and the middleware know about a call.
///
/// A value with one reference inside: every middleware and the handler hold it in their
/// async frames for as long as the call runs (a whole WatchJob), and a struct of a dozen
/// fields copied into each of those frames cost about 1 KiB per level per open stream. A
/// middleware that changes a field gets its own copy (copy on write).
public struct RPCContext: Sendable {
    /// The method called.
    public var method: MethodInfo { storage.method }
    /// The authenticated caller, set by ``AuthenticationMiddleware``; nil for methods that need
    /// no token (Health/Check).
    public var principal: Principal? {
        get { storage.principal }
        set { storage = storage.with(principal: newValue, logger: storage.logger) }
    }
    /// The call's metadata, keys lower-cased.
    public var metadata: [String: String] { storage.metadata }
    public var stream: Int32 { storage.stream }
    /// The call's `timeoutMs`, if it set one.
    public var timeoutMs: Int64? { storage.timeoutMs }
    public var logger: Logger {
        get { storage.logger }
        set { storage = storage.with(principal: storage.principal, logger: newValue) }
    }

    var control: StreamControl { storage.control }
    var deadlines: DeadlineTimer { storage.deadlines }
    var request: ByteBuffer { storage.request }
    var route: MethodRouter.Route { storage.route }
    var output: StreamOutput { storage.output }

    private var storage: Storage

    init(method: MethodInfo, principal: Principal?, metadata: [String: String], stream: Int32, timeoutMs: Int64?,
         logger: Logger, control: StreamControl, deadlines: DeadlineTimer, request: ByteBuffer,
         route: MethodRouter.Route, output: StreamOutput) {
        storage = Storage(method: method, principal: principal, metadata: metadata, stream: stream, timeoutMs: timeoutMs,
                          logger: logger, control: control, deadlines: deadlines, request: request, route: route, output: output)
    }

    private final class Storage: Sendable {
        let method: MethodInfo
        let principal: Principal?
        let metadata: [String: String]
        let stream: Int32
        let timeoutMs: Int64?
        let logger: Logger
        let control: StreamControl
        let deadlines: DeadlineTimer
        let request: ByteBuffer
        let route: MethodRouter.Route
        let output: StreamOutput

        init(method: MethodInfo, principal: Principal?, metadata: [String: String], stream: Int32, timeoutMs: Int64?,
             logger: Logger, control: StreamControl, deadlines: DeadlineTimer, request: ByteBuffer,
             route: MethodRouter.Route, output: StreamOutput) {
            self.method = method
            self.principal = principal
            self.metadata = metadata
            self.stream = stream
            self.timeoutMs = timeoutMs
            self.logger = logger
            self.control = control
            self.deadlines = deadlines
            self.request = request
            self.route = route
            self.output = output
        }

        func with(principal: Principal?, logger: Logger) -> Storage {
            Storage(method: method, principal: principal, metadata: metadata, stream: stream, timeoutMs: timeoutMs,
                    logger: logger, control: control, deadlines: deadlines, request: request, route: route, output: output)
        }
    }
}

/// Sends response messages of one streaming call. Each write waits while the connection's
/// outbound buffer is full (the client reads slowly), and throws once the stream has ended
/// (cancelled, past its deadline, connection gone), so a handler sends nothing late.
public struct ResponseWriter<Response: SwiftProtobuf.Message & Sendable>: Sendable {
    let output: StreamOutput

    public func write(_ response: Response) async throws {
        try await write(encoded: try Self.encode(response))
    }

    /// Sends a response already encoded (one encoding shared by many streams, as WatchJob's
    /// fan-out does).
    public func write(encoded: EncodedMessage<Response>) async throws {
        try await output.send(encoded.json)
    }

    /// Encodes a response once, to be written to many streams.
    static func encode(_ response: Response) throws -> EncodedMessage<Response> {
        do {
            return try EncodedMessage(response)
        } catch {
            throw RPCError(.internal, "cannot encode the response: \(error)")
        }
    }
}

/// Where a call's responses go: the connection, for one stream.
struct StreamOutput: Sendable {
    let send: @Sendable (ByteBuffer) async throws -> Void
    let setUnaryResponse: @Sendable (ByteBuffer) -> Void
    /// Writes the stream's status now, unless it already ended.
    let end: @Sendable (RPCError) -> Void
}

/// Handlers by method, registered with the method's descriptor, so that a handler's request
/// and response types are those of the method. A `ferry/1` method without a handler answers
/// UNIMPLEMENTED ("not implemented yet") after its role is checked; an unknown name answers
/// UNIMPLEMENTED ("unknown method").
public struct MethodRouter: Sendable {
    /// Decodes the request, runs the handler, sends the responses.
    typealias Invoke = @Sendable (RPCContext) async throws -> Void

    struct Route: Sendable {
        var info: MethodInfo
        var invoke: Invoke
    }

    private var routes: [String: Route] = [:]

    public init() {}

    /// Registers a unary method: one request, one response.
    public mutating func register<Request, Response>(
        _ method: UnaryMethod<Request, Response>,
        _ handler: @escaping @Sendable (Request, RPCContext) async throws -> Response
    ) {
        routes[method.info.name] = Route(info: method.info) { context in
            let request = try Self.decode(Request.self, context.request)
            let response = try await handler(request, context)
            context.output.setUnaryResponse(try ResponseWriter<Response>.encode(response).json)
        }
    }

    /// Registers a server-streaming method: one request, any number of responses.
    public mutating func register<Request, Response>(
        _ method: ServerStreamingMethod<Request, Response>,
        _ handler: @escaping @Sendable (Request, RPCContext, ResponseWriter<Response>) async throws -> Void
    ) {
        routes[method.info.name] = Route(info: method.info) { context in
            let request = try Self.decode(Request.self, context.request)
            try await handler(request, context, ResponseWriter(output: context.output))
        }
    }

    /// The route of a method name. A known method without a handler still gets a route (with
    /// its role), so its UNIMPLEMENTED answer reveals nothing to a caller without the role.
    func route(for name: String) -> Result<Route, RPCError> {
        if let route = routes[name] { return .success(route) }
        if let known = FerryMethods.named(name) {
            return .success(Route(info: known) { _ in
                throw RPCError(.unimplemented, "method \(name) is not implemented yet")
            })
        }
        return .failure(RPCError(.unimplemented, "unknown method \"\(name.prefix(200))\""))
    }

    private static func decode<Request: SwiftProtobuf.Message>(_ type: Request.Type, _ json: ByteBuffer) throws -> Request {
        do {
            return try MessageCoding.decode(Request.self, from: json)
        } catch {
            throw RPCError(.invalidArgument, "invalid request message: \(error)")
        }
    }
}
