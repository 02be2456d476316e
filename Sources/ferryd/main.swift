import Executors
import FerrydCLI

// No job kind is registered in this build: StartJob answers UNIMPLEMENTED, admitting nothing.
await FerrydMain.main(kinds: JobKinds())
