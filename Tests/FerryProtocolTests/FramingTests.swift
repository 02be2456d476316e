import FerryProtocol
import Foundation
import NIOCore
import NIOEmbedded
import Testing

/// The framing and frame rules, without a socket.
@Suite struct FramingTests {
    private func decoder(max: Int = 1024) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder<ClientFrame>(maxFrameBytes: max)))
        return channel
    }

    private func bytes(_ values: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: values) }

    private func frame(_ json: String) -> [UInt8] {
        let body = Array(json.utf8)
        return withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init) + body
    }

    private func readEvents(_ channel: EmbeddedChannel) throws -> [FrameEvent<ClientFrame>] {
        var events: [FrameEvent<ClientFrame>] = []
        while let event = try channel.readInbound(as: FrameEvent<ClientFrame>.self) { events.append(event) }
        return events
    }

    @Test func framesSplitAcrossReadsAndSeveralInOneRead() throws {
        let channel = try decoder()
        let all = frame(#"{"type":"ping","data":"a"}"#) + frame(#"{"type":"ping","data":"b"}"#)
        // Byte by byte…
        for byte in all { try channel.writeInbound(bytes([byte])) }
        // …and all at once.
        try channel.writeInbound(bytes(all))
        let frames = try readEvents(channel).compactMap { event -> ClientFrame? in
            if case .frame(let frame) = event { return frame }
            return nil
        }
        #expect(frames == [.ping(data: "a"), .ping(data: "b"), .ping(data: "a"), .ping(data: "b")])
    }

    @Test func lengthZeroIsAViolation() throws {
        let channel = try decoder()
        try channel.writeInbound(bytes([0, 0, 0, 0]))
        guard case .violation(.invalidArgument, let message)? = try readEvents(channel).first else {
            Issue.record("no violation")
            return
        }
        #expect(message.contains("frame length 0"))
    }

    @Test func anOversizedLengthIsRefusedFromTheHeaderAlone() throws {
        let channel = try decoder(max: 16)
        // Only the four length bytes arrive; the answer must not wait for the body.
        try channel.writeInbound(bytes([0, 0, 0, 17]))
        guard case .violation(.resourceExhausted, let message)? = try readEvents(channel).first else {
            Issue.record("no violation")
            return
        }
        #expect(message == "frame length 17 exceeds the limit of 16 bytes")
        // Whatever follows is discarded, not parsed.
        try channel.writeInbound(bytes(frame(#"{"type":"ping"}"#)))
        #expect(try readEvents(channel).isEmpty)
    }

    @Test func exactlyTheLimitIsAccepted() throws {
        let channel = try decoder(max: 16)
        let body = #"{"type":"ping"}"# + " "
        #expect(body.utf8.count == 16)
        try channel.writeInbound(bytes(frame(body)))
        guard case .frame(let got)? = try readEvents(channel).first else {
            Issue.record("frame not delivered")
            return
        }
        #expect(got == .ping(data: nil))
    }

    @Test(arguments: [
        ("{", FrameError.connection(.invalidArgument, "frame is not valid UTF-8 JSON")),
        ("null", .connection(.invalidArgument, "frame must be a JSON object, got null")),
        (#"{"type":"call","stream":3,"method":"m","timeoutMs":1.5}"#, .stream(3, .invalidArgument, "call \"timeoutMs\" must be a non-negative integer, got number(1.5)")),
        (#"{"type":"ping","data":5}"#, .connection(.invalidArgument, "ping \"data\" must be a string, got number")),
        (#"{"type":"cancel"}"#, .connection(.invalidArgument, "cancel frame has no \"stream\"")),
    ])
    func clientFrameRules(json: String, expected: FrameError) {
        guard case .failure(let error) = ClientFrame.parse(ByteBuffer(string: json)) else {
            Issue.record("\(json) was accepted")
            return
        }
        #expect(error == expected)
    }

    @Test func aCallParsesWithDefaultsAndIgnoresUnknownFields() throws {
        let parsed = ClientFrame.parse(ByteBuffer(string: #"{"type":"call","stream":2147483647,"method":"ferry.v1.Health/Check","extra":true,"metadata":{"Authorization":"Bearer x"},"timeoutMs":"250"}"#))
        #expect(parsed == .success(.call(.init(stream: 2_147_483_647, method: "ferry.v1.Health/Check", metadata: ["authorization": "Bearer x"], timeoutMs: 250, json: .object([:])))))
    }

    @Test func serverFramesRoundTrip() throws {
        let frames: [ServerFrame] = [
            .message(stream: 1, json: .object(["a": .number(1), "b": .array([.string("x"), .null, .bool(true)])])),
            .status(stream: 2, code: .resourceExhausted, message: "busy", details: .object(["runningJobIds": .array([.string("j")])])),
            .status(stream: 3, code: .ok, message: "", details: nil),
            .pong(data: "d"),
            .pong(data: nil),
            .goaway(code: .unavailable, message: "bye", lastStream: 41),
        ]
        for frame in frames {
            var encoded = frame.encoded()
            let length = encoded.readInteger(as: UInt32.self)
            #expect(Int(length ?? 0) == encoded.readableBytes)
            #expect(ServerFrame.parse(encoded) == .success(frame))
        }
    }

    @Test func theDocumentedByteExampleIsExact() throws {
        // docs/protocol.md shows these bytes: the test reads the page, so the two cannot drift.
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/protocol.md")
        let page = try String(contentsOf: docs, encoding: .utf8)

        let call = ClientFrame.call(.init(stream: 1, method: "ferry.v1.Health/Check", metadata: [:], json: .object([:]))).encoded()
        let callBytes = Array(call.readableBytesView)
        #expect(callBytes.prefix(4) == [0, 0, 0, 86])
        // The hex dump: 16 bytes a line, hex padded to 47 columns, three spaces, the text.
        let body = Array(callBytes.dropFirst(4))
        let dump = stride(from: 0, to: body.count, by: 16).map { offset in
            let chunk = body[offset..<min(offset + 16, body.count)]
            let hex = chunk.map { String(format: "%02x", $0) }.joined(separator: " ")
            return hex.padding(toLength: 47, withPad: " ", startingAt: 0) + "   " + String(decoding: chunk, as: UTF8.self)
        }.joined(separator: "\n")
        #expect(page.contains("00 00 00 56" + String(repeating: " ", count: 39) + "length 86\n" + dump + "\n"))

        // The answer: a message frame, then the status, each as the page shows it.
        for frame in [ServerFrame.message(stream: 1, json: .object(["status": .string("SERVING")])),
                      ServerFrame.status(stream: 1, code: .ok, message: "", details: nil)] {
            let bytes = Array(frame.encoded().readableBytesView)
            let prefix = bytes.prefix(4).map { String(format: "%02x", $0) }.joined(separator: " ")
            #expect(page.contains(prefix + "\n" + String(decoding: bytes.dropFirst(4), as: UTF8.self) + "\n"), "\(prefix)")
        }
    }
}

/// The JSON envelope reader: strict where JSON is strict, and safe on hostile input.
@Suite struct EnvelopeReaderTests {
    private func parse(_ bytes: [UInt8]) -> Result<ClientFrame, FrameError> {
        ClientFrame.parse(ByteBuffer(bytes: bytes))
    }

    private let notJSON = FrameError.connection(.invalidArgument, "frame is not valid UTF-8 JSON")

    @Test(arguments: [
        #"{"type":"ping","data":"\u00e9\ud83d\ude00 \" \\ \/ \n"}"#,
        "{\"type\":\"ping\",\"data\":\"é😀 \\\" \\\\ / \\n\"}",
    ])
    func escapesAndNonASCIIDecode(json: String) {
        #expect(parse(Array(json.utf8)) == .success(.ping(data: "é😀 \" \\ / \n")))
    }

    @Test(arguments: [
        Array(#"{"type":"ping","data":"\ud83d"}"#.utf8),            // a lone high surrogate
        Array(#"{"type":"ping","data":"\x"}"#.utf8),                // an unknown escape
        Array(#"{"type":"ping","data":"a"#.utf8) + [0x0A] + Array(#""}"#.utf8), // a raw control character
        Array(#"{"type":"ping","junk":""#.utf8) + [0xC0, 0xAF] + Array(#""}"#.utf8), // overlong UTF-8, in an ignored field
        Array(#"{"type":"ping","junk":""#.utf8) + [0xED, 0xA0, 0x80] + Array(#""}"#.utf8), // an encoded surrogate
        Array(#"{"type":"ping","n":01}"#.utf8),
        Array(#"{"type":"ping","n":1.}"#.utf8),
        Array(#"{"type":"ping","n":+1}"#.utf8),
        Array(#"{"type":"ping",}"#.utf8),
        Array(#"{"type":"ping"} {}"#.utf8),
        Array(#"{"type":"ping","x":[1,2,]}"#.utf8),
    ])
    func malformedJSONIsRefused(bytes: [UInt8]) {
        #expect(parse(bytes) == .failure(notJSON))
    }

    @Test func deepNestingNeitherCrashesNorIsAccepted() {
        // 1 MiB of `[` in an ignored field: skipped without recursion, refused at the end.
        let deep = Array(#"{"type":"ping","junk":"#.utf8) + Array(repeating: UInt8(ascii: "["), count: 1 << 20) + [UInt8(ascii: "}")]
        #expect(parse(deep) == .failure(notJSON))
        // Balanced deep nesting in the message is valid JSON: the envelope accepts it and the
        // message decoder (with its own depth limit) judges it.
        let balanced = Array(#"{"type":"call","stream":1,"method":"m","message":{"a":"#.utf8)
            + Array(repeating: UInt8(ascii: "["), count: 100_000) + Array(repeating: UInt8(ascii: "]"), count: 100_000) + Array("}}".utf8)
        guard case .success(.call(let call)) = parse(balanced) else {
            Issue.record("balanced nesting refused")
            return
        }
        #expect(call.message.readableBytes == 200_006)
    }

    @Test func theMessageIsHandedOnAsItsBytes() {
        let frame = #"{"message" : { "jobId" : "x\"y" , "n":[1,{}] } ,"type":"call","stream":9,"method":"m"}"#
        guard case .success(.call(let call)) = ClientFrame.parse(ByteBuffer(string: frame)) else {
            Issue.record("not parsed")
            return
        }
        #expect(String(buffer: call.message) == #"{ "jobId" : "x\"y" , "n":[1,{}] }"#)
        #expect(call.metadata.isEmpty && call.timeoutMs == nil)
    }

    @Test func anInvalidCallBecomesAStreamEventAndTheDecoderGoesOn() throws {
        let channel = EmbeddedChannel()
        let decoder = FrameDecoder<ClientFrame>(maxFrameBytes: 1024)
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
        try channel.pipeline.syncOperations.addHandler(IdleEventForwarder(decoder: decoder))
        func frame(_ json: String) -> ByteBuffer {
            var buffer = ByteBuffer()
            buffer.writeInteger(UInt32(json.utf8.count))
            buffer.writeString(json)
            return buffer
        }
        try channel.writeInbound(frame(#"{"type":"call","stream":4,"method":"m","message":[]}"#))
        try channel.writeInbound(frame(#"{"type":"ping"}"#))
        // Half a frame, then the idle timer: the event says a frame is cut off.
        try channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 9, 0x7b]))
        channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
        var events: [FrameEvent<ClientFrame>] = []
        while let event = try channel.readInbound(as: FrameEvent<ClientFrame>.self) { events.append(event) }
        guard events.count == 3 else {
            Issue.record("\(events)")
            return
        }
        guard case .invalidCall(4, .invalidArgument, let message) = events[0] else {
            Issue.record("\(events[0])")
            return
        }
        #expect(message == "call \"message\" must be an object, got array")
        guard case .frame(.ping(nil)) = events[1], case .idle(partialFrame: true) = events[2] else {
            Issue.record("\(events)")
            return
        }
    }

    @Test func theEncoderWritesWhatTheDecoderReads() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder<ServerFrame>()))
        let frame = ServerFrame.status(stream: 3, code: .notFound, message: "no \"job\"\n", details: .object(["k": .array([.number(1.5)])]))
        try channel.writeOutbound([frame])
        let written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(written == frame.encoded())
        var body = written
        let length = body.readInteger(as: UInt32.self)
        #expect(Int(length ?? 0) == body.readableBytes)
        #expect(ServerFrame.parse(body) == .success(frame))
    }
}
