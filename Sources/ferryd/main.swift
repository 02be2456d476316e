import DataMover
import Executors
import FerrydCLI

// The job kinds this build runs. Kinds not registered here are refused at StartJob with
// UNIMPLEMENTED, admitting nothing.
var kinds = JobKinds()
kinds.register(.clone) { resources in CloneKind(settings: resources.settings) }
await FerrydMain.main(kinds: kinds)
