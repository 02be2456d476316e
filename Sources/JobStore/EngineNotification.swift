import Foundation
import Logging
import PostgresNIO

/// The NOTIFY hints of the job engine, on channel ``EngineNotification/channel``.
///
/// Notifications are hints: everything they announce is also found by polling, so a lost one
/// costs at most a poll interval. Each has one text form on the wire; parsing and printing it
/// happen here and nowhere else.
public enum EngineNotification: Sendable, Hashable {
    /// A job became RUNNING and waits for an executor (`admitted`).
    case admitted
    /// Capacity was freed somewhere: queued jobs may go (`freed`).
    case freed
    /// A running job should stop (`cancel:<id>`).
    case cancel(UUID)
    /// A job has a new event (`job:<id>:<seq>`).
    case event(job: UUID, seq: Int64)
    /// Local only, never sent: the LISTEN session was (re)opened or lost, so anything may have
    /// been missed and every consumer should look again.
    case resync

    /// The channel all of Ferry's notifications use.
    public static let channel = "ferry"

    /// The payload text (`resync` is never sent, but has a text for logs).
    public var payload: String {
        switch self {
        case .admitted: "admitted"
        case .freed: "freed"
        case .cancel(let id): "cancel:\(id.uuidString.lowercased())"
        case .event(let job, let seq): "job:\(job.uuidString.lowercased()):\(seq)"
        case .resync: "resync"
        }
    }

    /// Parses a payload; nil for one this build does not know (a newer replica's), which is
    /// ignored like a lost hint.
    public init?(payload: String) {
        switch payload {
        case "admitted": self = .admitted
        case "freed": self = .freed
        default:
            let parts = payload.split(separator: ":", omittingEmptySubsequences: false)
            if parts.count == 2, parts[0] == "cancel", let id = UUID(uuidString: String(parts[1])) {
                self = .cancel(id)
            } else if parts.count == 3, parts[0] == "job", let id = UUID(uuidString: String(parts[1])), let seq = Int64(parts[2]) {
                self = .event(job: id, seq: seq)
            } else {
                return nil
            }
        }
    }

    /// Sends the notification when the caller's transaction commits (at once outside one).
    public func send(on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.execute("SELECT pg_notify(\(Self.channel), \(payload))", logger: logger)
    }
}
