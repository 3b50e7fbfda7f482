//! Unit tests of the Nacos adapter: error mapping and service names.

use super::*;
use error::parse_err_result;

#[test]
fn refused_requests_keep_code_and_message() {
    let e = parse_err_result(
        "handle register_instance failed: result_code=500, error_code=403, \
         message=unknown user!",
    );
    assert_eq!(e.code, Some(403));
    assert_eq!(e.message, "unknown user! (handle register_instance failed)");
    assert_eq!(
        e.to_string(),
        "nacos error 403: unknown user! (handle register_instance failed)"
    );
    let odd = parse_err_result("something else");
    assert_eq!(odd, NacosError::new(None, "something else"));
}

#[test]
fn service_names_cannot_hold_the_group_separator() {
    assert!(check_service("a@@b").is_err());
    assert!(check_service("a/b").is_err());
    check_service("user-service").expect("valid");
}
