import Foundation
import NIOCore

/// The largest stream id a client may choose: 2^31 − 1.
public let maxStreamID: Int64 = 2_147_483_647

/// A frame a client sends.
public enum ClientFrame: Sendable, Hashable {
    /// Opens stream `stream` with its one request message.
    case call(Call)
    /// Asks the server to end a stream with CANCELLED.
    case cancel(stream: Int32)
    /// Asks for a `pong` with the same data.
    case ping(data: String?)

    public struct Call: Sendable, Hashable {
        public var stream: Int32
        public var method: String
        public var metadata: [String: String]
        public var timeoutMs: Int64?
        public var message: JSONValue

        public init(stream: Int32, method: String, metadata: [String: String] = [:], timeoutMs: Int64? = nil, message: JSONValue = .object([:])) {
            self.stream = stream
            self.method = method
            self.metadata = metadata
            self.timeoutMs = timeoutMs
            self.message = message
        }
    }
}

/// A frame the server sends.
public enum ServerFrame: Sendable, Hashable {
    case message(stream: Int32, message: JSONValue)
    case status(stream: Int32, code: StatusCode, message: String, details: JSONValue?)
    case pong(data: String?)
    case goaway(code: StatusCode, message: String, lastStream: Int32)
}

/// Why a received frame was refused.
public enum FrameError: Error, Sendable, Hashable {
    /// Breaks the connection rules: answered with `goaway` and the connection closes.
    case connection(StatusCode, String)
    /// A `call` whose stream id is valid but whose content is not: ends only that stream.
    case stream(Int32, StatusCode, String)
}

extension ClientFrame {
    /// Parses one frame body (the bytes after the length prefix).
    public static func parse(_ body: ByteBuffer) -> Result<ClientFrame, FrameError> {
        let object: [String: JSONValue]
        switch parseObject(body) {
        case .success(let parsed): object = parsed
        case .failure(let error): return .failure(error)
        }
        guard let typeValue = object["type"] else {
            return .failure(.connection(.invalidArgument, "frame has no \"type\""))
        }
        guard case .string(let type) = typeValue else {
            return .failure(.connection(.invalidArgument, "frame \"type\" must be a string, got \(typeValue.typeName)"))
        }
        switch type {
        case "call":
            let stream: Int32
            switch streamID(object["stream"], in: "call") {
            case .success(let id): stream = id
            case .failure(let error): return .failure(error)
            }
            guard case .string(let method)? = object["method"] else {
                return .failure(.stream(stream, .invalidArgument, "call \"method\" must be a string, got \(object["method"]?.typeName ?? "nothing")"))
            }
            var metadata: [String: String] = [:]
            switch object["metadata"] {
            case nil, .null?: break
            case .object(let entries)?:
                for (key, value) in entries {
                    guard case .string(let text) = value else {
                        return .failure(.stream(stream, .invalidArgument, "call \"metadata\" values must be strings; \"\(key)\" is \(value.typeName)"))
                    }
                    metadata[key.lowercased()] = text
                }
            case let other?:
                return .failure(.stream(stream, .invalidArgument, "call \"metadata\" must be an object of strings, got \(other.typeName)"))
            }
            var timeoutMs: Int64?
            switch object["timeoutMs"] {
            case nil, .null?: break
            case .number(let value)? where value >= 0 && value.rounded() == value && value <= 9_007_199_254_740_991:
                timeoutMs = Int64(value)
            case .string(let text)? where Int64(text).map { $0 >= 0 } == true:
                timeoutMs = Int64(text)
            case let other?:
                return .failure(.stream(stream, .invalidArgument, "call \"timeoutMs\" must be a non-negative integer, got \(other.typeName == "number" ? "\(other)" : other.typeName)"))
            }
            let message = object["message"] ?? .object([:])
            guard case .object = message else {
                return .failure(.stream(stream, .invalidArgument, "call \"message\" must be an object, got \(message.typeName)"))
            }
            return .success(.call(Call(stream: stream, method: method, metadata: metadata, timeoutMs: timeoutMs, message: message)))
        case "cancel":
            return streamID(object["stream"], in: "cancel").map { .cancel(stream: $0) }
        case "ping":
            switch object["data"] {
            case nil, .null?: return .success(.ping(data: nil))
            case .string(let data)?: return .success(.ping(data: data))
            case let other?: return .failure(.connection(.invalidArgument, "ping \"data\" must be a string, got \(other.typeName)"))
            }
        default:
            return .failure(.connection(.invalidArgument, "unknown frame type \"\(type.prefix(64))\""))
        }
    }

    /// The frame as JSON (without the length prefix).
    public var json: JSONValue {
        switch self {
        case .call(let call):
            var object: [String: JSONValue] = [
                "type": .string("call"), "stream": .number(Double(call.stream)), "method": .string(call.method),
                "metadata": .object(call.metadata.mapValues { .string($0) }), "message": call.message,
            ]
            if let timeoutMs = call.timeoutMs { object["timeoutMs"] = .number(Double(timeoutMs)) }
            return .object(object)
        case .cancel(let stream):
            return .object(["type": .string("cancel"), "stream": .number(Double(stream))])
        case .ping(let data):
            var object: [String: JSONValue] = ["type": .string("ping")]
            if let data { object["data"] = .string(data) }
            return .object(object)
        }
    }
}

extension ServerFrame {
    /// Parses one frame body received from a server.
    public static func parse(_ body: ByteBuffer) -> Result<ServerFrame, FrameError> {
        let object: [String: JSONValue]
        switch parseObject(body) {
        case .success(let parsed): object = parsed
        case .failure(let error): return .failure(error)
        }
        guard case .string(let type)? = object["type"] else {
            return .failure(.connection(.invalidArgument, "frame has no string \"type\""))
        }
        func code(_ value: JSONValue?) -> StatusCode? {
            guard case .string(let text)? = value else { return nil }
            return StatusCode(rawValue: text)
        }
        func text(_ value: JSONValue?) -> String? {
            if case .string(let text)? = value { return text }
            return nil
        }
        switch type {
        case "message":
            guard case .success(let stream) = streamID(object["stream"], in: "message") else {
                return .failure(.connection(.invalidArgument, "message frame without a valid stream"))
            }
            return .success(.message(stream: stream, message: object["message"] ?? .object([:])))
        case "status":
            guard case .success(let stream) = streamID(object["stream"], in: "status"), let statusCode = code(object["code"]) else {
                return .failure(.connection(.invalidArgument, "status frame without a valid stream and code"))
            }
            let details = object["details"].flatMap { $0 == .null ? nil : $0 }
            return .success(.status(stream: stream, code: statusCode, message: text(object["message"]) ?? "", details: details))
        case "pong":
            return .success(.pong(data: text(object["data"])))
        case "goaway":
            guard let goawayCode = code(object["code"]) else {
                return .failure(.connection(.invalidArgument, "goaway frame without a valid code"))
            }
            var lastStream: Int32 = 0
            if case .number(let value)? = object["lastStream"], value >= 0, value <= Double(maxStreamID) { lastStream = Int32(value) }
            return .success(.goaway(code: goawayCode, message: text(object["message"]) ?? "", lastStream: lastStream))
        default:
            return .failure(.connection(.invalidArgument, "unknown frame type \"\(type.prefix(64))\""))
        }
    }

    /// The frame as JSON (without the length prefix).
    public var json: JSONValue {
        switch self {
        case .message(let stream, let message):
            return .object(["type": .string("message"), "stream": .number(Double(stream)), "message": message])
        case .status(let stream, let code, let message, let details):
            var object: [String: JSONValue] = [
                "type": .string("status"), "stream": .number(Double(stream)), "code": .string(code.rawValue), "message": .string(message),
            ]
            if let details { object["details"] = details }
            return .object(object)
        case .pong(let data):
            var object: [String: JSONValue] = ["type": .string("pong")]
            if let data { object["data"] = .string(data) }
            return .object(object)
        case .goaway(let code, let message, let lastStream):
            return .object([
                "type": .string("goaway"), "code": .string(code.rawValue), "message": .string(message),
                "lastStream": .number(Double(lastStream)),
            ])
        }
    }
}

/// Encodes one frame: a 4-byte big-endian length, then the JSON.
public func encodeFrame(_ json: JSONValue, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
    // Encoding a JSONValue cannot fail: it holds only JSON-representable values.
    let body = (try? frameEncoder.encode(json)) ?? Data("{}".utf8)
    var buffer = allocator.buffer(capacity: body.count + 4)
    buffer.writeInteger(UInt32(body.count))
    buffer.writeBytes(body)
    return buffer
}

private let frameEncoder: JSONEncoder = {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return encoder
}()

private func parseObject(_ body: ByteBuffer) -> Result<[String: JSONValue], FrameError> {
    let value: JSONValue
    do {
        value = try JSONDecoder().decode(JSONValue.self, from: Data(body.readableBytesView))
    } catch {
        return .failure(.connection(.invalidArgument, "frame is not valid UTF-8 JSON"))
    }
    guard case .object(let object) = value else {
        return .failure(.connection(.invalidArgument, "frame must be a JSON object, got \(value.typeName)"))
    }
    return .success(object)
}

private func streamID(_ value: JSONValue?, in frame: String) -> Result<Int32, FrameError> {
    guard let value else {
        return .failure(.connection(.invalidArgument, "\(frame) frame has no \"stream\""))
    }
    guard case .number(let number) = value, number.rounded() == number else {
        return .failure(.connection(.invalidArgument, "\(frame) \"stream\" must be an integer, got \(value.typeName)"))
    }
    guard number >= 1, number <= Double(maxStreamID) else {
        return .failure(.connection(.invalidArgument, "\(frame) \"stream\" must be from 1 to 2147483647, got \(number < 0 ? "a negative number" : number == 0 ? "0" : "a number over 2^31-1")"))
    }
    return .success(Int32(number))
}
