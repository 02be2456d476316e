import NIOCore

/// The largest stream id a client may choose: 2^31 − 1.
public let maxStreamID: Int64 = 2_147_483_647

/// A frame type of one direction of `ferry/1`: parsed from a frame body, written with its
/// length prefix. ``ClientFrame`` travels to the server, ``ServerFrame`` to the client.
public protocol WireFrame: Sendable {
    /// Parses one frame body (the bytes after the length prefix).
    static func parse(_ body: ByteBuffer) -> Result<Self, FrameError>
    /// Appends the frame: a 4-byte big-endian length, then the JSON body.
    func write(to buffer: inout ByteBuffer)
}

extension WireFrame {
    /// The frame with its length prefix, in a new buffer.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 128)
        write(to: &buffer)
        return buffer
    }
}

/// A frame a client sends.
public enum ClientFrame: WireFrame, Hashable {
    /// Opens stream `stream` with its one request message.
    case call(Call)
    /// Asks the server to end a stream with CANCELLED.
    case cancel(stream: Int32)
    /// Asks for a `pong` with the same data.
    case ping(data: String?)

    public struct Call: Sendable, Hashable {
        public var stream: Int32
        public var method: String
        /// Keys are lower-cased when parsed (metadata keys are case-insensitive).
        public var metadata: [String: String]
        public var timeoutMs: Int64?
        /// The request message as the JSON text the client sent (an object), undecoded: the
        /// method's request type decodes it, once, after the call is authorized.
        public var message: ByteBuffer

        public init(stream: Int32, method: String, metadata: [String: String] = [:], timeoutMs: Int64? = nil, message: ByteBuffer = ByteBuffer(string: "{}")) {
            self.stream = stream
            self.method = method
            self.metadata = metadata
            self.timeoutMs = timeoutMs
            self.message = message
        }

        public init(stream: Int32, method: String, metadata: [String: String] = [:], timeoutMs: Int64? = nil, json: JSONValue) {
            var message = ByteBuffer()
            message.writeJSON(json)
            self.init(stream: stream, method: method, metadata: metadata, timeoutMs: timeoutMs, message: message)
        }
    }
}

/// A frame the server sends.
public enum ServerFrame: WireFrame, Hashable {
    /// One response message, as JSON text (an object).
    case message(stream: Int32, message: ByteBuffer)
    case status(stream: Int32, code: StatusCode, message: String, details: JSONValue?)
    case pong(data: String?)
    case goaway(code: StatusCode, message: String, lastStream: Int32)

    /// A `message` frame holding `json`.
    public static func message(stream: Int32, json: JSONValue) -> ServerFrame {
        var message = ByteBuffer()
        message.writeJSON(json)
        return .message(stream: stream, message: message)
    }
}

/// Why a received frame was refused.
public enum FrameError: Error, Sendable, Hashable {
    /// Breaks the connection rules: answered with `goaway` and the connection closes.
    case connection(StatusCode, String)
    /// A `call` whose stream id is valid but whose content is not: ends only that stream.
    case stream(Int32, StatusCode, String)
}

// MARK: Parsing

/// The top-level fields of a frame body, read in one pass: small fields as values, the
/// `message` as the byte range of its (validated, unparsed) JSON.
private struct Envelope {
    var fields: [String: JSONValue] = [:]
    var message: (kind: JSONValue.Kind, range: Range<Int>)?

    /// Reads `body` as one JSON object, keeping the members named in `keep`.
    static func read(_ body: ByteBuffer, keeping keep: Set<String>) -> Result<Envelope, FrameError> {
        body.withUnsafeReadableBytes { bytes -> Result<Envelope, FrameError> in
            var reader = JSONReader(bytes)
            var envelope = Envelope()
            do {
                guard try reader.peekKind() == .object else {
                    let kind = try reader.peekKind()
                    _ = try reader.skipValue()
                    reader.skipWhitespace()
                    guard reader.isAtEnd else { throw JSONReader.SyntaxError(offset: reader.offset) }
                    return .failure(.connection(.invalidArgument, "frame must be a JSON object, got \(kind.rawValue)"))
                }
                try reader.readObject { (reader, key) throws(JSONReader.SyntaxError) in
                    if key == "message" {
                        let kind = try reader.peekKind()
                        envelope.message = (kind, try reader.skipValue())
                    } else if keep.contains(key) {
                        envelope.fields[key] = try reader.parseValue()
                    } else {
                        _ = try reader.skipValue()
                    }
                }
                reader.skipWhitespace()
                guard reader.isAtEnd else { throw JSONReader.SyntaxError(offset: reader.offset) }
            } catch {
                return .failure(.connection(.invalidArgument, "frame is not valid UTF-8 JSON"))
            }
            return .success(envelope)
        }
    }

    subscript(key: String) -> JSONValue? { fields[key] }

    /// The type field, checked.
    func type() -> Result<String, FrameError> {
        guard let value = fields["type"] else { return .failure(.connection(.invalidArgument, "frame has no \"type\"")) }
        guard case .string(let type) = value else {
            return .failure(.connection(.invalidArgument, "frame \"type\" must be a string, got \(value.typeName)"))
        }
        return .success(type)
    }

    /// The message JSON as a slice of `body` (`{}` when absent or null); nil when it is
    /// another kind of value.
    func messageSlice(of body: ByteBuffer) -> (ByteBuffer?, JSONValue.Kind) {
        guard let message, message.kind != .null else { return (ByteBuffer(string: "{}"), .object) }
        guard message.kind == .object, let slice = body.getSlice(at: body.readerIndex + message.range.lowerBound, length: message.range.count) else {
            return (nil, message.kind)
        }
        // A copy, not a slice: a slice would keep the decoder's whole read buffer (up to a
        // maximum-size frame) alive for as long as the call runs.
        var copy = ByteBufferAllocator().buffer(capacity: slice.readableBytes)
        copy.writeImmutableBuffer(slice)
        return (copy, .object)
    }

    func streamID(in frame: String) -> Result<Int32, FrameError> {
        guard let value = fields["stream"] else {
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
}

extension ClientFrame {
    private static let fields: Set<String> = ["type", "stream", "method", "metadata", "timeoutMs", "data"]

    public static func parse(_ body: ByteBuffer) -> Result<ClientFrame, FrameError> {
        let envelope: Envelope
        let type: String
        switch Envelope.read(body, keeping: fields).flatMap({ envelope in envelope.type().map { (envelope, $0) } }) {
        case .success(let read): (envelope, type) = read
        case .failure(let error): return .failure(error)
        }
        switch type {
        case "call":
            let stream: Int32
            switch envelope.streamID(in: "call") {
            case .success(let id): stream = id
            case .failure(let error): return .failure(error)
            }
            func refuse(_ message: String) -> Result<ClientFrame, FrameError> { .failure(.stream(stream, .invalidArgument, message)) }
            guard case .string(let method)? = envelope["method"] else {
                return refuse("call \"method\" must be a string, got \(envelope["method"]?.typeName ?? "nothing")")
            }
            var metadata: [String: String] = [:]
            switch envelope["metadata"] {
            case nil, .null?: break
            case .object(let entries)?:
                for (key, value) in entries {
                    guard case .string(let text) = value else {
                        return refuse("call \"metadata\" values must be strings; \"\(key)\" is \(value.typeName)")
                    }
                    metadata[key.lowercased()] = text
                }
            case let other?:
                return refuse("call \"metadata\" must be an object of strings, got \(other.typeName)")
            }
            var timeoutMs: Int64?
            switch envelope["timeoutMs"] {
            case nil, .null?: break
            case .number(let value)? where value >= 0 && value.rounded() == value && value <= 9_007_199_254_740_991:
                timeoutMs = Int64(value)
            case .string(let text)? where Int64(text).map { $0 >= 0 } == true:
                timeoutMs = Int64(text)
            case .number(let value)?:
                return refuse("call \"timeoutMs\" must be a non-negative integer, got number(\(value))")
            case let other?:
                return refuse("call \"timeoutMs\" must be a non-negative integer, got \(other.typeName)")
            }
            let (message, kind) = envelope.messageSlice(of: body)
            guard let message else { return refuse("call \"message\" must be an object, got \(kind.rawValue)") }
            return .success(.call(Call(stream: stream, method: method, metadata: metadata, timeoutMs: timeoutMs, message: message)))
        case "cancel":
            return envelope.streamID(in: "cancel").map { .cancel(stream: $0) }
        case "ping":
            switch envelope["data"] {
            case nil, .null?: return .success(.ping(data: nil))
            case .string(let data)?: return .success(.ping(data: data))
            case let other?: return .failure(.connection(.invalidArgument, "ping \"data\" must be a string, got \(other.typeName)"))
            }
        default:
            return .failure(.connection(.invalidArgument, "unknown frame type \"\(type.prefix(64))\""))
        }
    }

    // Members are written in sorted key order, so a frame's bytes are predictable (the
    // protocol page shows them).
    public func write(to buffer: inout ByteBuffer) {
        buffer.writeFrame { buffer in
            switch self {
            case .call(let call):
                buffer.writeStaticString(#"{"message":"#)
                var message = call.message
                buffer.writeBuffer(&message)
                buffer.writeStaticString(#","metadata":"#)
                buffer.writeJSON(.object(call.metadata.mapValues { .string($0) }))
                buffer.writeStaticString(#","method":"#)
                buffer.writeJSONString(call.method)
                buffer.writeStaticString(#","stream":"#)
                buffer.writeString(String(call.stream))
                if let timeoutMs = call.timeoutMs {
                    buffer.writeStaticString(#","timeoutMs":"#)
                    buffer.writeString(String(timeoutMs))
                }
                buffer.writeStaticString(#","type":"call"}"#)
            case .cancel(let stream):
                buffer.writeStaticString(#"{"stream":"#)
                buffer.writeString(String(stream))
                buffer.writeStaticString(#","type":"cancel"}"#)
            case .ping(let data):
                buffer.writeDataFrameBody(data: data, type: #""type":"ping"}"#)
            }
        }
    }
}

extension ServerFrame {
    private static let fields: Set<String> = ["type", "stream", "code", "details", "data", "lastStream"]

    /// Parses one frame body received from a server.
    public static func parse(_ body: ByteBuffer) -> Result<ServerFrame, FrameError> {
        let envelope: Envelope
        let type: String
        switch Envelope.read(body, keeping: fields).flatMap({ envelope in envelope.type().map { (envelope, $0) } }) {
        case .success(let read): (envelope, type) = read
        case .failure(let error): return .failure(error)
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
            guard case .success(let stream) = envelope.streamID(in: "message"), case (let message?, _) = envelope.messageSlice(of: body) else {
                return .failure(.connection(.invalidArgument, "message frame without a valid stream and message object"))
            }
            return .success(.message(stream: stream, message: message))
        case "status":
            guard case .success(let stream) = envelope.streamID(in: "status"), let statusCode = code(envelope["code"]) else {
                return .failure(.connection(.invalidArgument, "status frame without a valid stream and code"))
            }
            let details = envelope["details"].flatMap { $0 == .null ? nil : $0 }
            return .success(.status(stream: stream, code: statusCode, message: text(envelope.messageText(of: body)) ?? "", details: details))
        case "pong":
            return .success(.pong(data: text(envelope["data"])))
        case "goaway":
            guard let goawayCode = code(envelope["code"]) else {
                return .failure(.connection(.invalidArgument, "goaway frame without a valid code"))
            }
            var lastStream: Int32 = 0
            if case .number(let value)? = envelope["lastStream"], value >= 0, value <= Double(maxStreamID) { lastStream = Int32(value) }
            return .success(.goaway(code: goawayCode, message: text(envelope.messageText(of: body)) ?? "", lastStream: lastStream))
        default:
            return .failure(.connection(.invalidArgument, "unknown frame type \"\(type.prefix(64))\""))
        }
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeFrame { buffer in
            switch self {
            case .message(let stream, let message):
                buffer.writeStaticString(#"{"message":"#)
                var message = message
                buffer.writeBuffer(&message)
                buffer.writeStaticString(#","stream":"#)
                buffer.writeString(String(stream))
                buffer.writeStaticString(#","type":"message"}"#)
            case .status(let stream, let code, let message, let details):
                buffer.writeStaticString(#"{"code":"#)
                buffer.writeJSONString(code.rawValue)
                if let details {
                    buffer.writeStaticString(#","details":"#)
                    buffer.writeJSON(details)
                }
                buffer.writeStaticString(#","message":"#)
                buffer.writeJSONString(message)
                buffer.writeStaticString(#","stream":"#)
                buffer.writeString(String(stream))
                buffer.writeStaticString(#","type":"status"}"#)
            case .pong(let data):
                buffer.writeDataFrameBody(data: data, type: #""type":"pong"}"#)
            case .goaway(let code, let message, let lastStream):
                buffer.writeStaticString(#"{"code":"#)
                buffer.writeJSONString(code.rawValue)
                buffer.writeStaticString(#","lastStream":"#)
                buffer.writeString(String(lastStream))
                buffer.writeStaticString(#","message":"#)
                buffer.writeJSONString(message)
                buffer.writeStaticString(#","type":"goaway"}"#)
            }
        }
    }
}

extension Envelope {
    /// In status and goaway frames `message` is the text for people, not a message object.
    func messageText(of body: ByteBuffer) -> JSONValue? {
        guard let message, message.kind == .string, let slice = body.getSlice(at: body.readerIndex + message.range.lowerBound, length: message.range.count) else { return nil }
        return JSONValue(parsing: slice)
    }
}

extension ByteBuffer {
    /// The body of a `ping` or `pong`: `data` when there is one, then the closing `type`.
    mutating func writeDataFrameBody(data: String?, type: StaticString) {
        writeStaticString("{")
        if let data {
            writeStaticString(#""data":"#)
            writeJSONString(data)
            writeStaticString(",")
        }
        writeStaticString(type)
    }

    /// Writes a length prefix and the body `write` appends.
    mutating func writeFrame(_ write: (inout ByteBuffer) -> Void) {
        let start = writerIndex
        writeInteger(UInt32(0))
        write(&self)
        setInteger(UInt32(writerIndex - start - 4), at: start)
    }
}
