/// Splits `host:port` (an IPv6 host in brackets, `[::1]:7443`); nil when it is not that
/// shape or the port is outside `ports`.
public func parseHostPort(_ text: String, ports: ClosedRange<Int> = 0...65535) -> (host: String, port: Int)? {
    guard let colon = text.lastIndex(of: ":"), colon != text.startIndex,
          let port = Int(text[text.index(after: colon)...]), ports.contains(port)
    else { return nil }
    var host = Substring(text[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
    return (String(host), port)
}
