import FerryProtocol
import Foundation
import SwiftProtobuf
import Testing

/// The method descriptors match the services of `proto/ferry/v1` (the messages themselves
/// are generated from the same files by scripts/generate-proto, whose `--check` tells when
/// the committed code is stale).
@Suite struct MethodConformanceTests {
    /// `rpc Name(Request) returns (stream? Response);` of every service, as
    /// `ferry.v1.Service/Name` → (request, response, server-streaming).
    private func protoMethods() throws -> [String: (request: String, response: String, streaming: Bool)] {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../proto/ferry/v1")
        var methods: [String: (String, String, Bool)] = [:]
        for file in try FileManager.default.contentsOfDirectory(atPath: folder.path) where file.hasSuffix(".proto") {
            let text = try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8)
            var service: String?
            for rawLine in text.split(separator: "\n") {
                let line = rawLine.trimmingCharacters(in: .whitespaces)
                if line.hasPrefix("//") { continue }
                if line.hasPrefix("service ") { service = String(line.split(separator: " ")[1]) }
                guard line.hasPrefix("rpc "), let service else { continue }
                // rpc WatchJob(WatchJobRequest) returns (stream JobEvent);
                let words = line.replacingOccurrences(of: "(", with: " ").replacingOccurrences(of: ")", with: " ")
                    .replacingOccurrences(of: ";", with: " ").split(separator: " ").map(String.init)
                let streaming = words.contains("stream")
                let names = words.filter { !["rpc", "returns", "stream", "{", "}"].contains($0) }
                #expect(!words[2...].prefix(while: { $0 != "returns" }).contains("stream"), "client streaming is not part of ferry/1: \(line)")
                methods["ferry.v1.\(service)/\(names[0])"] = ("ferry.v1.\(names[1])", "ferry.v1.\(names[2])", streaming)
            }
        }
        return methods
    }

    @Test func everyProtoMethodHasADescriptorWithItsMessageTypes() throws {
        let proto = try protoMethods()
        #expect(proto.count == 13, "\(proto.keys.sorted())")
        #expect(Set(proto.keys) == Set(FerryMethods.all.map(\.name)))
        for method in FerryMethods.all {
            guard let expected = proto[method.name] else { continue }
            #expect(method.requestMessage == expected.request, "\(method.name)")
            #expect(method.responseMessage == expected.response, "\(method.name)")
            #expect(method.isServerStreaming == expected.streaming, "\(method.name)")
            #expect(FerryMethods.named(method.name) == method)
        }
        #expect(FerryMethods.named("ferry.v1.Jobs/Nope") == nil)
    }

    @Test func requiredRolesFollowTheProtocol() {
        let expected: [String: Role?] = [
            "ferry.v1.Health/Check": nil,
            "ferry.v1.Jobs/GetJob": .viewer, "ferry.v1.Jobs/ListJobs": .viewer, "ferry.v1.Jobs/WatchJob": .viewer,
            "ferry.v1.Instances/ListInstances": .viewer, "ferry.v1.Instances/ListTenants": .viewer,
            "ferry.v1.Artifacts/ListArtifacts": .viewer, "ferry.v1.Artifacts/GetArtifact": .viewer,
            "ferry.v1.Artifacts/DeleteArtifact": .admin,
            "ferry.v1.Jobs/StartJob": .operator, "ferry.v1.Jobs/RerunJob": .operator, "ferry.v1.Jobs/CancelJob": .operator,
            "ferry.v1.Instances/PutInstance": .admin,
        ]
        #expect(Set(expected.keys) == Set(FerryMethods.all.map(\.name)))
        for method in FerryMethods.all {
            #expect(method.requiredRole == expected[method.name] ?? nil, "\(method.name)")
        }
        #expect(Role.viewer < Role.operator && Role.operator < Role.admin && Role.viewer < Role.admin)
        #expect(!(Role.admin < Role.viewer) && !(Role.operator < Role.operator))
        #expect(Role.allCases.map(\.rawValue) == ["viewer", "operator", "admin"])
    }

    /// The proto3 JSON mapping as the protocol page states it.
    @Test func messagesTravelInTheProto3JSONMapping() throws {
        var job = Job()
        job.id = "a"
        job.kind = .instanceReplace
        job.status = .running
        job.attempt = 2
        job.progress.rowsCopied = 9_007_199_254_740_993
        job.createdAt = Google_Protobuf_Timestamp(seconds: 1_795_500_000, nanos: 123_000_000)
        let json = try #require(JSONValue(parsing: try MessageCoding.encode(job)))
        #expect(json["kind"] == .string("INSTANCE_REPLACE"), "enum values as names")
        #expect(json["progress"]?["rowsCopied"] == .string("9007199254740993"), "64-bit integers as decimal strings")
        #expect(json["createdAt"] == .string("2026-11-24T06:00:00.123Z"), "timestamps as RFC 3339")
        #expect(json["attempt"] == .number(2))
        #expect(json["rerunOf"] == nil, "default values are left out")

        // Numbers are accepted for 64-bit integers, and unknown fields are ignored.
        let request = try MessageCoding.decode(WatchJobRequest.self, from: .init(string: #"{"jobId":"x","afterSeq":12,"future":[1]}"#))
        #expect(request.jobID == "x" && request.afterSeq == 12)
    }

    @Test func aWrongFieldIsNamed() {
        #expect(throws: MessageDecodingError.self) { try MessageCoding.decode(GetJobRequest.self, from: .init(string: #"{"jobId":42}"#)) }
        do {
            _ = try MessageCoding.decode(StartJobRequest.self, from: .init(string: #"{"queue":true,"clone":{"sourceInstance":5}}"#))
            Issue.record("accepted")
        } catch {
            #expect(error.field == "clone", "\(error)")
            #expect(error.description.hasPrefix(#"field "clone" has the wrong type or value"#))
        }
    }

    @Test func enumNamesRoundTrip() {
        for status in JobStatus.allCases { #expect(JobStatus(name: status.name) == status) }
        for kind in JobKind.allCases { #expect(JobKind(name: kind.name) == kind) }
        for type in JobEventType.allCases { #expect(JobEventType(name: type.name) == type) }
        #expect(JobStatus(name: "queued") == nil)
        #expect(JobStatus.queued.name == "QUEUED" && JobKind.instanceReplace.name == "INSTANCE_REPLACE")
    }
}
