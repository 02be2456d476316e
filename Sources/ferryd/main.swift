import DataMover
import Executors
import FerrydCLI

// The job kinds this build runs. Kinds not registered here are refused at StartJob with
// UNIMPLEMENTED, admitting nothing.
var kinds = JobKinds()
kinds.register(.clone) { resources in CloneKind(settings: resources.settings) }
kinds.register(.export) { resources in ExportKind(settings: resources.settings) }
kinds.register(.import) { resources in ImportKind(settings: resources.settings, controlDatabase: resources.controlDatabase) }
kinds.register(.instanceReplace) { resources in InstanceReplaceKind(settings: resources.settings, controlDatabase: resources.controlDatabase) }
await FerrydMain.main(kinds: kinds)
