//! `cohort`: see the library's [`cohort::cli`].

fn main() {
    std::process::exit(cohort::cli::main());
}
