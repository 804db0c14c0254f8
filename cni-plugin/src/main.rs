//! `weir`: the CNI plugin binary (see issue 4; the protocol lands with it).

fn main() {
    // VERSION is the only verb that needs nothing else; the rest of the
    // protocol arrives with the CNI work.
    if std::env::var("CNI_COMMAND").as_deref() == Ok("VERSION") {
        println!(
            r#"{{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}}"#
        );
        return;
    }
    println!(r#"{{"cniVersion":"1.1.0","code":4,"msg":"unsupported CNI_COMMAND"}}"#);
    std::process::exit(1);
}
