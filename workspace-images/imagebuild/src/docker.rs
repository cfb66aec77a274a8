//! Docker connection with an explicit API version in every request path.

use bollard::Docker;

/// API version sent in every request path. Docker 20.10, the oldest engine Strongroom
/// supports, serves API 1.41; newer engines still accept it.
pub const DOCKER_API_VERSION: &str = "1.41";

/// Connects to the local Docker socket and pins every request to [`DOCKER_API_VERSION`].
///
/// bollard 0.21.1 builds request URIs with `Url::join`, which drops its own `/v1.xx`
/// prefix, so without this modifier the daemon would interpret each call with whatever
/// API version it serves by default.
pub fn connect_docker() -> Result<Docker, bollard::errors::Error> {
    let docker = Docker::connect_with_unix_defaults()?;
    Ok(docker.with_request_modifier(add_version_prefix))
}

fn add_version_prefix(mut request: bollard::BollardRequest) -> bollard::BollardRequest {
    let uri = request.uri().clone();
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    if path_and_query.starts_with("/v1.") {
        return request;
    }

    let mut parts = uri.into_parts();
    let versioned = format!("/v{DOCKER_API_VERSION}{path_and_query}");
    parts.path_and_query = match versioned.parse() {
        Ok(value) => Some(value),
        Err(_) => return request,
    };
    if let Ok(new_uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = new_uri;
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> bollard::BollardRequest {
        http::Request::builder()
            .uri(uri)
            .body(bollard::body_full(bytes::Bytes::new()))
            .unwrap()
    }

    #[test]
    fn prefix_added_once() {
        let out = add_version_prefix(request("unix://2f7661722f72756e/images/create?fromSrc=-"));
        assert_eq!(out.uri().path(), "/v1.41/images/create");
        assert_eq!(out.uri().query(), Some("fromSrc=-"));

        let again = add_version_prefix(out);
        assert_eq!(again.uri().path(), "/v1.41/images/create");
    }
}
