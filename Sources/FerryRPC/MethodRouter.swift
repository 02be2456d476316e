import FerryProtocol
import Foundation
import Logging

/// What a handler knows about its call.
public struct RPCContext: Sendable {
    public var method: String
    /// The authenticated caller; `nil` for methods that need no token (Health/Check).
    public var principal: Principal?
    public var metadata: [String: String]
    public var stream: Int32
    public var logger: Logger
}

/// Sends response messages of one stream. Writes after the stream ended (cancelled, past its
/// deadline) are dropped, so a handler that is slow to notice cancellation sends nothing late.
public struct ResponseWriter<Response: Encodable & Sendable>: Sendable {
    let send: @Sendable (JSONValue) async throws -> Void

    public func write(_ response: Response) async throws {
        let json: JSONValue
        do {
            json = try JSONValue.encoding(response)
        } catch {
            throw RPCError(.internal, "cannot encode the response: \(error)")
        }
        try await send(json)
    }

    /// Sends a response already in its JSON form (one encoding shared by many streams, as
    /// WatchJob's fan-out does). The caller vouches that it is a `Response`.
    public func write(json: JSONValue) async throws {
        try await send(json)
    }
}

/// Method handlers registered by wire name. A known method without a handler answers
/// UNIMPLEMENTED ("not implemented yet"), an unknown one UNIMPLEMENTED ("unknown method").
public struct MethodRouter: Sendable {
    typealias Handler = @Sendable (RPCContext, JSONValue, @escaping @Sendable (JSONValue) async throws -> Void) async throws -> Void

    struct Route: Sendable {
        var role: Role?
        var handler: Handler
    }

    var routes: [String: Route] = [:]

    public init() {}

    /// Registers a unary method: one request, one response.
    public mutating func unary<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        _ method: FerryMethod,
        _ handler: @escaping @Sendable (Request, RPCContext) async throws -> Response
    ) {
        precondition(!method.isServerStreaming, "\(method.rawValue) is a streaming method")
        routes[method.rawValue] = Route(role: method.requiredRole) { context, message, send in
            let request: Request = try Self.decode(message, as: Request.self)
            let response = try await handler(request, context)
            try await ResponseWriter<Response>(send: send).write(response)
        }
    }

    /// Registers a server-streaming method: one request, any number of responses.
    public mutating func serverStreaming<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        _ method: FerryMethod,
        _ handler: @escaping @Sendable (Request, RPCContext, ResponseWriter<Response>) async throws -> Void
    ) {
        precondition(method.isServerStreaming, "\(method.rawValue) is a unary method")
        routes[method.rawValue] = Route(role: method.requiredRole) { context, message, send in
            let request: Request = try Self.decode(message, as: Request.self)
            try await handler(request, context, ResponseWriter(send: send))
        }
    }

    /// The route of `method`. A known method without a handler still gets its role checked
    /// first, so its UNIMPLEMENTED answer reveals nothing to a caller without the role.
    func route(for method: String) -> Result<Route, RPCError> {
        if let route = routes[method] { return .success(route) }
        if let known = FerryMethod(rawValue: method) {
            return .success(Route(role: known.requiredRole) { _, _, _ in
                throw RPCError(.unimplemented, "method \(method) is not implemented yet")
            })
        }
        return .failure(RPCError(.unimplemented, "unknown method \"\(method.prefix(200))\""))
    }

    /// Decodes a request; a wrong field type becomes INVALID_ARGUMENT naming the field.
    static func decode<Request: Decodable>(_ message: JSONValue, as type: Request.Type) throws -> Request {
        do {
            return try message.decode(Request.self)
        } catch let error as DecodingError {
            throw RPCError(.invalidArgument, "invalid request message: \(describe(error))")
        } catch {
            throw RPCError(.invalidArgument, "invalid request message: \(error)")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let text = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
            return text.isEmpty ? "message" : "field \"\(text)\""
        }
        switch error {
        case .typeMismatch(let type, let context):
            return "\(path(context)) has the wrong type (expected \(type))"
        case .valueNotFound(let type, let context):
            return "\(path(context)) is null (expected \(type))"
        case .keyNotFound(let key, let context):
            return "missing field \"\(key.stringValue)\" in \(path(context))"
        case .dataCorrupted(let context):
            return "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }
}
