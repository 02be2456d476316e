import FerryProtocol
import Foundation
import NIOCore
import NIOEmbedded
import Testing

/// The framing and frame rules, without a socket.
@Suite struct FramingTests {
    private func decoder(max: Int = 1024) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(FrameDecoder(maxFrameBytes: max))
        return channel
    }

    private func bytes(_ values: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: values) }

    private func frame(_ json: String) -> [UInt8] {
        let body = Array(json.utf8)
        return withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init) + body
    }

    private func readEvents(_ channel: EmbeddedChannel) throws -> [FrameEvent] {
        var events: [FrameEvent] = []
        while let event = try channel.readInbound(as: FrameEvent.self) { events.append(event) }
        return events
    }

    @Test func framesSplitAcrossReadsAndSeveralInOneRead() throws {
        let channel = try decoder()
        let all = frame(#"{"type":"ping","data":"a"}"#) + frame(#"{"type":"ping","data":"b"}"#)
        // Byte by byte…
        for byte in all { try channel.writeInbound(bytes([byte])) }
        // …and all at once.
        try channel.writeInbound(bytes(all))
        let bodies = try readEvents(channel).compactMap { event -> String? in
            if case .frame(let body) = event { return String(buffer: body) }
            return nil
        }
        #expect(bodies == [#"{"type":"ping","data":"a"}"#, #"{"type":"ping","data":"b"}"#, #"{"type":"ping","data":"a"}"#, #"{"type":"ping","data":"b"}"#])
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
        #expect(got.readableBytes == 16)
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
        #expect(parsed == .success(.call(.init(stream: 2_147_483_647, method: "ferry.v1.Health/Check", metadata: ["authorization": "Bearer x"], timeoutMs: 250, message: .object([:])))))
    }

    @Test func serverFramesRoundTrip() throws {
        let frames: [ServerFrame] = [
            .message(stream: 1, message: .object(["a": .number(1), "b": .array([.string("x"), .null, .bool(true)])])),
            .status(stream: 2, code: .resourceExhausted, message: "busy", details: .object(["runningJobIds": .array([.string("j")])])),
            .status(stream: 3, code: .ok, message: "", details: nil),
            .pong(data: "d"),
            .pong(data: nil),
            .goaway(code: .unavailable, message: "bye", lastStream: 41),
        ]
        for frame in frames {
            var encoded = encodeFrame(frame.json)
            let length = encoded.readInteger(as: UInt32.self)
            #expect(Int(length ?? 0) == encoded.readableBytes)
            #expect(ServerFrame.parse(encoded) == .success(frame))
        }
    }

    @Test func theDocumentedByteExampleIsExact() throws {
        // docs/protocol.md shows these bytes: the test reads the page, so the two cannot drift.
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/protocol.md")
        let page = try String(contentsOf: docs, encoding: .utf8)

        let call = encodeFrame(ClientFrame.call(.init(stream: 1, method: "ferry.v1.Health/Check", metadata: [:], message: .object([:]))).json)
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
        for frame in [ServerFrame.message(stream: 1, message: .object(["status": .string("SERVING")])),
                      ServerFrame.status(stream: 1, code: .ok, message: "", details: nil)] {
            let bytes = Array(encodeFrame(frame.json).readableBytesView)
            let prefix = bytes.prefix(4).map { String(format: "%02x", $0) }.joined(separator: " ")
            #expect(page.contains(prefix + "\n" + String(decoding: bytes.dropFirst(4), as: UTF8.self) + "\n"), "\(prefix)")
        }
    }
}
