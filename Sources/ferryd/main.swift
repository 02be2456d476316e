import Executors
import FerrydCLI

// The job kinds arrive with the data mover; until then StartJob answers UNIMPLEMENTED.
await FerrydMain.main(runners: JobRunners())
