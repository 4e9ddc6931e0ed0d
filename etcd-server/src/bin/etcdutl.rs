//! `etcdutl`: parses the command line and runs it (see `etcd_server::etcdutl`).

fn main() -> std::process::ExitCode {
    etcd_server::etcdutl::run(std::env::args_os())
}
