import NIOCore

/// What the framing layer hands up to a connection.
public enum FrameEvent<Frame: WireFrame>: Sendable {
    /// A well-formed frame.
    case frame(Frame)
    /// A `call` with a valid stream id but something wrong inside: ends only that stream.
    case invalidCall(stream: Int32, code: StatusCode, message: String)
    /// The byte stream broke the framing or frame rules: the connection must send `goaway`
    /// and close. Nothing after it is read.
    case violation(StatusCode, String)
    /// Nothing arrived for the read-idle time; `partialFrame` says whether a frame is cut off.
    case idle(partialFrame: Bool)
}

/// Splits the inbound byte stream into length-prefixed frames and parses each into `Frame`.
///
/// The length is checked as soon as its four bytes arrive: 0 and anything over
/// `maxFrameBytes` are refused before a single byte of the body is buffered. After a
/// violation, further input is discarded unread. A frame is parsed only once its body is
/// complete, so the decoder never holds more than one frame plus one read.
///
/// A class (the `ByteToMessageHandler` keeps it by reference), so that ``IdleEventForwarder``
/// can ask whether a frame is half-received.
public final class FrameDecoder<Frame: WireFrame>: ByteToMessageDecoder {
    public typealias InboundOut = FrameEvent<Frame>

    private let maxFrameBytes: Int
    private var broken = false
    /// Bytes of an unfinished frame are buffered.
    public private(set) var hasPartialFrame = false

    public init(maxFrameBytes: Int) {
        self.maxFrameBytes = maxFrameBytes
    }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard !broken else {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        defer { hasPartialFrame = buffer.readableBytes > 0 }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        if length == 0 {
            return violation(context, &buffer, .invalidArgument, "frame length 0 (a frame holds 1 to \(maxFrameBytes) bytes)")
        }
        if length > UInt32(maxFrameBytes) {
            return violation(context, &buffer, .resourceExhausted, "frame length \(length) exceeds the limit of \(maxFrameBytes) bytes")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let body = buffer.readSlice(length: Int(length))!
        switch Frame.parse(body) {
        case .success(let frame):
            context.fireChannelRead(wrapInboundOut(.frame(frame)))
        case .failure(.stream(let stream, let code, let message)):
            context.fireChannelRead(wrapInboundOut(.invalidCall(stream: stream, code: code, message: message)))
        case .failure(.connection(let code, let message)):
            return violation(context, &buffer, code, message)
        }
        return .continue
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // Whole frames still buffered are delivered; a frame cut off by the peer closing is
        // dropped: there is nobody left to answer.
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        hasPartialFrame = false
        return .needMoreData
    }

    private func violation(_ context: ChannelHandlerContext, _ buffer: inout ByteBuffer, _ code: StatusCode, _ message: String) -> DecodingState {
        broken = true
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        context.fireChannelRead(wrapInboundOut(.violation(code, message)))
        return .needMoreData
    }
}

/// Turns a read-idle event of an `IdleStateHandler` (placed before the decoder) into a
/// ``FrameEvent/idle(partialFrame:)`` read, so the connection decides what idleness means.
public final class IdleEventForwarder<Frame: WireFrame>: ChannelInboundHandler {
    public typealias InboundIn = FrameEvent<Frame>
    public typealias InboundOut = FrameEvent<Frame>

    private let decoder: FrameDecoder<Frame>

    public init(decoder: FrameDecoder<Frame>) {
        self.decoder = decoder
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.fireChannelRead(wrapInboundOut(.idle(partialFrame: decoder.hasPartialFrame)))
            // Async channels pass reads on at read-complete; this read came from a timer.
            context.fireChannelReadComplete()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Writes frames of one direction with their length prefix. A write carries one or more
/// frames, encoded into one buffer: a unary call's response and status go out as one TLS
/// record.
public struct FrameEncoder<Frame: WireFrame>: MessageToByteEncoder {
    public typealias OutboundIn = [Frame]

    public init() {}

    public func encode(data: [Frame], out: inout ByteBuffer) throws {
        for frame in data { frame.write(to: &out) }
    }
}
