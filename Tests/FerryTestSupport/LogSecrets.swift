import Foundation

/// Every line of `logs` that contains one of `secrets`, as written, percent-encoded (as in
/// a DSN: `p@ss` is `p%40ss` there, and either form may be logged; upper- or lower-case
/// hex) or escaped inside a JSON string (`\"`, `\\`). An empty result means no secret
/// leaked; a test asserts it is empty and shows the lines when it is not.
///
/// Pass the output of every process of a test (`ServingFerryd.stop()`,
/// `Replicas.stop()`, `RunningProcess.finish()`), and every secret it used: instance and
/// database passwords, bearer tokens. Empty secrets are ignored (they would match every line).
public func leakedSecrets(in logs: String, secrets: [String]) -> [String] {
    let forms = Set(secrets.filter { !$0.isEmpty }.flatMap { secret -> [String] in
        var forms = [secret]
        // Everything but the unreserved characters encoded (what DatabaseURL writes), and the
        // looser encoding URLComponents and others use for a URL's user-info part.
        for allowed in [CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~")), .urlPasswordAllowed] {
            if let encoded = secret.addingPercentEncoding(withAllowedCharacters: allowed) {
                forms.append(encoded)
                forms.append(lowercasingHex(encoded))
            }
        }
        return forms + forms.map { $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") }
    })
    return logs.split(whereSeparator: \.isNewline).map(String.init).filter { line in
        forms.contains { line.contains($0) }
    }
}

/// `%2F` as `%2f`: percent-encoding's hex digits may be written either way.
private func lowercasingHex(_ encoded: String) -> String {
    var result = ""
    var rest = Substring(encoded)
    while let percent = rest.firstIndex(of: "%") {
        result += rest[..<percent]
        let hex = rest[percent...].dropFirst().prefix(2)
        result += "%" + hex.lowercased()
        rest = rest[percent...].dropFirst(1 + hex.count)
    }
    return result + rest
}
