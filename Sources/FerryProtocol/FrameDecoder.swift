import NIOCore

/// What the framing layer hands up: a complete frame body, or the reason the byte stream
/// broke the framing rules (after which nothing more is read).
public enum FrameEvent: Sendable {
    case frame(ByteBuffer)
    case violation(StatusCode, String)
    /// No bytes arrived for the idle timeout; `partialFrame` says whether a frame was cut off.
    case idle(partialFrame: Bool)
}

/// Splits the inbound byte stream into length-prefixed frames.
///
/// The length is checked as soon as its four bytes arrive: 0 and anything over
/// `maxFrameBytes` are refused before a single byte of the body is buffered. After a
/// violation, further input is discarded.
public final class FrameDecoder: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = FrameEvent

    private let maxFrameBytes: Int
    private var buffer: ByteBuffer?
    private var pendingLength: Int?
    private var broken = false

    public init(maxFrameBytes: Int) {
        self.maxFrameBytes = maxFrameBytes
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !broken else { return }
        var incoming = unwrapInboundIn(data)
        if buffer == nil {
            buffer = incoming
        } else {
            buffer!.writeBuffer(&incoming)
        }
        while !broken, var current = buffer {
            if pendingLength == nil {
                guard let length = current.readInteger(as: UInt32.self) else { break }
                if length == 0 {
                    fail(context, .invalidArgument, "frame length 0 (a frame holds 1 to \(maxFrameBytes) bytes)")
                    return
                }
                if length > UInt32(maxFrameBytes) {
                    fail(context, .resourceExhausted, "frame length \(length) exceeds the limit of \(maxFrameBytes) bytes")
                    return
                }
                pendingLength = Int(length)
            }
            guard let length = pendingLength, let body = current.readSlice(length: length) else {
                buffer = current
                break
            }
            pendingLength = nil
            buffer = current.readableBytes > 0 ? current : nil
            context.fireChannelRead(wrapInboundOut(.frame(body)))
        }
        if let current = buffer, current.readableBytes == 0 {
            buffer = nil
        } else if var current = buffer, current.readerIndex > 64 * 1024 {
            current.discardReadBytes()
            buffer = current
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.fireChannelRead(wrapInboundOut(.idle(partialFrame: buffer != nil || pendingLength != nil)))
            // NIOAsyncChannel hands reads on only at read-complete; this read came from a timer.
            context.fireChannelReadComplete()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        // A frame cut off by the peer closing is simply dropped: there is nobody to answer.
        buffer = nil
        pendingLength = nil
        context.fireChannelInactive()
    }

    private func fail(_ context: ChannelHandlerContext, _ code: StatusCode, _ message: String) {
        broken = true
        buffer = nil
        pendingLength = nil
        context.fireChannelRead(wrapInboundOut(.violation(code, message)))
    }
}
