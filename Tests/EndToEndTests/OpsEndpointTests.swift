import FerryCore
import FerryServer
import FerryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The ops endpoint (`/healthz`, `/metrics`) of a real `ferryd serve` bounds what a client can
/// hold: a silent connection is closed after the request timeout, and connections beyond the
/// cap are closed at once, without stopping health checks once room is back.
@Suite struct OpsEndpointTests {
    @Test func silentAndExcessConnectionsAreClosedAndHealthStillAnswers() async throws {
        let url = try await TestPostgres.shared.freshDatabase("ops_limits")
        try await ServingFerryd.with(environment: ["FERRY_DATABASE_URL": url.secretURLString]) { server in
            let opsURL = try #require(server.ready["opsURL"])
            let port = try #require(Int(opsURL.split(separator: ":").last ?? ""))
            let cap = OpsServer.defaultMaxConnections
            let timeout = OpsServer.defaultRequestTimeout

            // A client that connects and sends nothing, plus enough others to fill the cap.
            let connected = ContinuousClock.now
            let silent = try RawSocket(port: port)
            var fillers: [RawSocket] = []
            for _ in 1..<cap { fillers.append(try RawSocket(port: port)) }
            defer { for filler in fillers { filler.close() } }
            // Let the server accept them all before more arrive (accepts are in order anyway).
            try await Task.sleep(for: .milliseconds(500))

            // Beyond the cap: closed at once, long before the request timeout.
            for _ in 0..<3 {
                let extra = try RawSocket(port: port)
                defer { extra.close() }
                // Within 5 s, half the 10 s request timeout: closed for the cap, not for idling.
                let closed = extra.waitForClose(upTo: .seconds(5))
                #expect(closed, "a connection beyond the cap of \(cap) stayed open")
            }
            // Those within the cap are still open.
            #expect(!silent.waitForClose(upTo: .zero), "a connection within the cap was closed early")
            #expect(!fillers[0].waitForClose(upTo: .zero))

            // Room again: health answers.
            for filler in fillers { filler.close() }
            fillers = []
            var status = ""
            for _ in 0..<30 where !status.hasPrefix("HTTP/1.1 200") {
                status = (try? RawSocket.get(port: port, path: "/healthz")) ?? ""
                if !status.hasPrefix("HTTP/1.1 200") { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(status.hasPrefix("HTTP/1.1 200"), "GET /healthz answered \(status)")
            #expect(status.hasSuffix("SERVING\n"))

            // The silent client is closed by the server once its time is up, not before.
            #expect(silent.waitForClose(upTo: timeout + .seconds(10)), "a silent connection stayed open past the request timeout")
            let lifetime = ContinuousClock.now - connected
            #expect(lifetime >= timeout - .milliseconds(500), "closed after \(lifetime), before the \(timeout) timeout")
            #expect(lifetime < timeout + .seconds(5))
            silent.close()
        }
    }
}

/// A blocking loopback TCP client, enough to hold connections open and read an answer.
final class RawSocket {
    private var fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketError(message: "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw SocketError(message: "connect: \(message)")
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Whether the peer closed (end of file or reset) within `duration`; data is read and dropped.
    func waitForClose(upTo duration: Duration) -> Bool {
        let deadline = ContinuousClock.now + duration
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let left = max(0, (deadline - ContinuousClock.now).wholeMilliseconds)
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(left))
            if ready < 0, errno == EINTR { continue }
            guard ready > 0 else { return false }
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { return true }
        }
    }

    /// Sends a GET and returns the whole answer (the server closes after one request).
    func get(_ path: String) throws -> String {
        // Never hang the test on a server that does not answer.
        var wait = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == request.count else {
            throw SocketError(message: "write: \(String(cString: strerror(errno)))")
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { break }
            answer += buffer[0..<count]
        }
        return String(decoding: answer, as: UTF8.self)
    }

    static func get(port: Int, path: String) throws -> String {
        let socket = try RawSocket(port: port)
        defer { socket.close() }
        return try socket.get(path)
    }

    struct SocketError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}
