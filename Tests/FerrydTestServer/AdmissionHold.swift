import Coordinator
import FerryServer
import Foundation

/// A replica that stalls in the middle of an admission, for the tests of what a stuck lock
/// holder does to the other replicas: when `FERRY_TEST_ADMISSION_HOLD_SECONDS` is set, an
/// admission on an instance whose id starts with `hold-` sleeps that long once it holds its
/// instance locks (the tests then freeze the replica with SIGSTOP). Without the variable it
/// installs nothing, so only the replicas a test chooses hold.
public func installAdmissionHold(_ configuration: inout ServerConfiguration) {
    guard let text = ProcessInfo.processInfo.environment["FERRY_TEST_ADMISSION_HOLD_SECONDS"], let seconds = Double(text), seconds > 0 else { return }
    configuration.coordinator.afterLocking = { instances in
        guard instances.contains(where: { $0.hasPrefix("hold-") }) else { return }
        try? await Task.sleep(for: .seconds(seconds))
    }
}
