import FerryProtocol
import Logging
import NIOCore
import SwiftProtobuf

/// What a handler and the middleware know about a call.
public struct RPCContext: Sendable {
    /// The method called.
    public let method: MethodInfo
    /// The authenticated caller, set by ``AuthenticationMiddleware``; nil for methods that need
    /// no token (Health/Check).
    public var principal: Principal?
    /// The call's metadata, keys lower-cased.
    public let metadata: [String: String]
    public let stream: Int32
    /// The call's `timeoutMs`, if it set one.
    public let timeoutMs: Int64?
    public var logger: Logger

    let control: StreamControl
    let deadlines: DeadlineTimer
    let request: ByteBuffer
    let route: MethodRouter.Route
    let output: StreamOutput
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
