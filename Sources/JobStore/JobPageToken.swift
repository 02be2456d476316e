import FerryProtocol
import Foundation

/// ListJobs' page tokens: opaque to clients, base64url of "<created_at µs>:<id>" of the last
/// job of the previous page (newest first).
public enum JobPageToken {
    public static func encode(_ createdAt: Date, _ id: UUID) -> String {
        let micros = Int64((createdAt.timeIntervalSince1970 * 1_000_000).rounded())
        return Data("\(micros):\(id.uuidString.lowercased())".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    public static func decode(_ token: String) throws -> (micros: Int64, id: UUID) {
        var base64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard let data = Data(base64Encoded: base64), let text = String(data: data, encoding: .utf8) else {
            throw RPCError(.invalidArgument, "pageToken is not a token this server issued")
        }
        let parts = text.split(separator: ":")
        guard parts.count == 2, let micros = Int64(parts[0]), let id = UUID(uuidString: String(parts[1])) else {
            throw RPCError(.invalidArgument, "pageToken is not a token this server issued")
        }
        return (micros, id)
    }

}
