// Plaintext HTTP in the JDK, for sightline's tests: `server PORT NEXT` serves GET /front/...
// from a pool of threads, each request calling NEXT before it answers, with HttpURLConnection
// (which sends on the calling thread; HttpClient hands the write to its selector thread);
// `client URL...` fetches each URL with HttpClient and prints the status codes.
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class Plain {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        if (args[0].equals("client")) {
            for (int i = 1; i < args.length; i++) {
                HttpResponse<String> r = client.send(
                        HttpRequest.newBuilder(URI.create(args[i])).build(),
                        HttpResponse.BodyHandlers.ofString());
                System.out.println(r.statusCode());
            }
            return;
        }
        String next = args[2];
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[1])), 64);
        server.createContext("/front/", ex -> {
            int status;
            byte[] body;
            try {
                HttpURLConnection c = (HttpURLConnection) URI.create(next).toURL().openConnection();
                status = c.getResponseCode() == 200 ? 200 : 502;
                try (InputStream in = c.getInputStream()) {
                    body = in.readAllBytes();
                }
            } catch (Exception e) {
                status = 502;
                body = e.toString().getBytes(StandardCharsets.UTF_8);
            }
            ex.sendResponseHeaders(status, body.length);
            ex.getResponseBody().write(body);
            ex.close();
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("listening on 127.0.0.1:" + server.getAddress().getPort());
    }
}
