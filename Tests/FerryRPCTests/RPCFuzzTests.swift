import FerryProtocol
import FerryRPC
import Foundation
import Testing

/// A deterministic generator (SplitMix64), so every run sends the same frames.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random and mutated frames over a few connections. The server must never crash, must
/// answer every well-formed call (a `call` with a fresh valid stream id) with exactly one
/// status, even when a later frame on the same connection breaks the rules, and must keep
/// serving.
@Suite struct RPCFuzzTests {
    static let seed: UInt64 = 0xF3_44_1A_2B
    static let totalFrames = 100_000
    static let connections = 4

    @Test func randomAndMutatedFrames() async throws {
        let report = try await withTestServer(configure: { $0.maxFrameBytes = 64 * 1024 }) { server in
            try await withThrowingTaskGroup(of: FuzzReport.self) { group in
                for index in 0..<Self.connections {
                    group.addTask {
                        var fuzzer = Fuzzer(port: server.port, generator: SeededGenerator(seed: Self.seed &+ UInt64(index)))
                        return try await fuzzer.run(frames: Self.totalFrames / Self.connections)
                    }
                }
                var total = FuzzReport()
                for try await report in group { total.add(report) }
                // Still serving after all of it.
                let client = try await server.client()
                defer { client.close() }
                #expect(try await client.check().status == .serving)
                return total
            }
        }
        print("fuzz: \(report.framesSent) frames (\(report.wellFormedCalls) well-formed calls, \(report.dangerousFrames) rule-breaking or mutated frames), \(report.reconnects) reconnects, statuses by code: \(report.statusCodes.sorted { $0.key < $1.key })")
        #expect(report.framesSent >= Self.totalFrames)
        #expect(report.missingStatuses == 0)
        #expect(report.duplicateStatuses == 0)
        #expect(report.wellFormedCalls > 50_000)
        #expect(report.reconnects > 10, "the mutations should have broken some connections")
    }
}

struct FuzzReport: Sendable {
    var framesSent = 0
    var wellFormedCalls = 0
    var dangerousFrames = 0
    var reconnects = 0
    var missingStatuses = 0
    var duplicateStatuses = 0
    var statusCodes: [String: Int] = [:]

    mutating func add(_ other: FuzzReport) {
        framesSent += other.framesSent
        wellFormedCalls += other.wellFormedCalls
        dangerousFrames += other.dangerousFrames
        reconnects += other.reconnects
        missingStatuses += other.missingStatuses
        duplicateStatuses += other.duplicateStatuses
        statusCodes.merge(other.statusCodes, uniquingKeysWith: +)
    }
}

struct Fuzzer {
    let port: Int
    var generator: SeededGenerator
    var report = FuzzReport()

    init(port: Int, generator: SeededGenerator) {
        self.port = port
        self.generator = generator
    }

    private mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &generator) < percent }

    private mutating func randomJSONValue(depth: Int = 0) -> String {
        switch Int.random(in: 0..<(depth > 2 ? 5 : 7), using: &generator) {
        case 0: return "null"
        case 1: return Bool.random(using: &generator) ? "true" : "false"
        case 2: return String(Int.random(in: -1_000_000...1_000_000, using: &generator))
        case 3: return "1e\(Int.random(in: -300...300, using: &generator))"
        case 4: return "\"\(randomText())\""
        case 5: return "[" + (0..<Int.random(in: 0...3, using: &generator)).map { _ in randomJSONValue(depth: depth + 1) }.joined(separator: ",") + "]"
        default: return "{" + (0..<Int.random(in: 0...3, using: &generator)).map { _ in "\"\(randomText())\":\(randomJSONValue(depth: depth + 1))" }.joined(separator: ",") + "}"
        }
    }

    /// Text that is valid inside a JSON string literal, escapes included.
    private mutating func randomText() -> String {
        let pieces = ["a", "b", "c", "X", "Z", "0", "9", "_", "-", "/", " ", "é", "\\u00e9", "\\n", "\\\"", "\\\\"]
        return (0..<Int.random(in: 0...8, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined()
    }

    /// A call with a fresh valid stream id: it must get exactly one status, whatever is inside.
    private mutating func wellFormedCall(stream: Int32) -> String {
        let methods = ["ferry.v1.Health/Check", "ferry.v1.Health/Check", "ferry.v1.Jobs/GetJob", "ferry.v1.Jobs/WatchJob",
                       "ferry.v1.Jobs/StartJob", "ferry.v1.Instances/PutInstance", "ferry.v1.Nope/\(randomText())", randomText()]
        let method = methods.randomElement(using: &generator)!
        let tokens = ["", "Bearer \(TestTokens.viewer)", "Bearer \(TestTokens.admin)", "Bearer wrong", randomText()]
        var fields = [#""type":"call""#, #""stream":\#(stream)"#]
        fields.append(chance(90) ? #""method":"\#(method)""# : #""method":\#(randomJSONValue())"#)
        if chance(70) { fields.append(#""metadata":{"authorization":"\#(tokens.randomElement(using: &generator)!)"}"#) }
        if chance(10) { fields.append(#""metadata":\#(randomJSONValue())"#) }
        if chance(10) { fields.append(#""timeoutMs":\#(chance(50) ? String(Int.random(in: 0...50, using: &generator)) : randomJSONValue())"#) }
        switch Int.random(in: 0..<4, using: &generator) {
        case 0: fields.append(#""message":{}"#)
        case 1: fields.append(#""message":{"jobId":"\#(["sleep:\(Int.random(in: 0...5, using: &generator))", "count:2:0", randomText()].randomElement(using: &generator)!)"}"#)
        case 2: fields.append(#""message":{"jobId":\#(randomJSONValue()),"afterSeq":\#(randomJSONValue())}"#)
        default: fields.append(#""message":\#(randomJSONValue())"#)
        }
        if chance(20) { fields.append(#""\#(randomText())":\#(randomJSONValue())"#) }
        fields.shuffle(using: &generator)
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// A frame that may break the connection rules (or, after mutation, may not).
    private mutating func dangerousFrame() -> [UInt8] {
        switch Int.random(in: 0..<7, using: &generator) {
        case 0: return [0, 0, 0, 0]
        case 1: return withUnsafeBytes(of: UInt32.random(in: 65_537...UInt32.max, using: &generator).bigEndian, Array.init)
        case 2: return framed(Array(randomJSONValue().utf8))
        case 3: return framed((0..<Int.random(in: 1...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        default:
            // Mutate a valid frame a little; ids stay far above the well-formed ones.
            let templates = [
                #"{"type":"call","stream":\#(Int.random(in: 1_000_000_000...2_000_000_000, using: &generator)),"method":"ferry.v1.Health/Check","message":{}}"#,
                #"{"type":"ping","data":"\#(randomText())"}"#,
                #"{"type":"cancel","stream":\#(Int.random(in: 1_000_000_000...2_000_000_000, using: &generator))}"#,
            ]
            var body = Array(templates.randomElement(using: &generator)!.utf8)
            for _ in 0..<Int.random(in: 1...3, using: &generator) where !body.isEmpty {
                let at = Int.random(in: 0..<body.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: body[at] = UInt8.random(in: 0...255, using: &generator)
                case 1: body.remove(at: at)
                default: body.insert(UInt8.random(in: 0...255, using: &generator), at: at)
                }
            }
            return framed(body.isEmpty ? [0x7b] : body)
        }
    }

    private func framed(_ body: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init) + body
    }

    mutating func run(frames: Int) async throws -> FuzzReport {
        var nextStream: Int32 = 1
        var connection = try await RawClient.connect(port: port)
        var syncCounter = 0
        while report.framesSent < frames {
            // A batch of well-formed traffic, perhaps ending with one rule-breaking frame.
            var bytes: [UInt8] = []
            var expected: [Int32: Int] = [:]
            for _ in 0..<Int.random(in: 20...200, using: &generator) {
                switch Int.random(in: 0..<100, using: &generator) {
                case 0..<75:
                    let stream = nextStream
                    nextStream += 1
                    expected[stream] = 0
                    bytes += framed(Array(wellFormedCall(stream: stream).utf8))
                    report.wellFormedCalls += 1
                case 75..<88:
                    bytes += framed(Array(#"{"type":"ping","data":"\#(randomText())"}"#.utf8))
                default:
                    // Cancel of a random stream, open, finished or never used: at most ends it early.
                    bytes += framed(Array(#"{"type":"cancel","stream":\#(Int32.random(in: 1...max(1, nextStream), using: &generator))}"#.utf8))
                }
                report.framesSent += 1
            }
            let dangerous = chance(25)
            if dangerous {
                bytes += dangerousFrame()
                report.framesSent += 1
                report.dangerousFrames += 1
            }
            syncCounter += 1
            let sync = "sync-\(syncCounter)"
            bytes += framed(Array(#"{"type":"ping","data":"\#(sync)"}"#.utf8))
            try await connection.send(bytes)

            // Read until every call is answered and the sync pong came back, or the server closed.
            var synced = false
            var closed = false
            while !(synced && expected.values.allSatisfy { $0 > 0 }) {
                guard let frame = try await connection.next(timeout: .seconds(30)) else {
                    closed = true
                    break
                }
                switch frame {
                case .status(let stream, let code, _, _):
                    if let seen = expected[stream] {
                        expected[stream] = seen + 1
                        report.statusCodes[code.rawValue, default: 0] += 1
                    }
                case .pong(let data) where data == sync:
                    synced = true
                default:
                    break
                }
            }
            if closed {
                // Calls sent before the breaking frame are still answered before the close.
                report.missingStatuses += expected.values.filter { $0 == 0 }.count
            }
            report.duplicateStatuses += expected.values.filter { $0 > 1 }.count
            if closed || synced == false {
                connection.close()
                connection = try await RawClient.connect(port: port)
                report.reconnects += 1
                nextStream = 1
            } else if dangerous, Bool.random(using: &generator) {
                // A survivable mutation: carry on with the same connection half the time.
                continue
            }
        }
        connection.close()
        return report
    }
}
