"""Launch the grasp generator (and optionally a simulated depth camera).

    ros2 launch dvqvae_ros grasp_generator.launch.py model:=/path/to/checkpoint points_topic:=/object/points
    ros2 launch dvqvae_ros grasp_generator.launch.py use_fake_camera:=true object:=bottle

Parameters come from config/grasp_generator.yaml (or params_file:=...); the
launch arguments below override the most common ones.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "dvqvae_ros"


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "grasp_generator.yaml"])
    params_file = LaunchConfiguration("params_file")
    points_topic = LaunchConfiguration("points_topic")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML with the parameters of both nodes"),
        DeclareLaunchArgument("model", default_value="default",
                              description="checkpoint directory, or 'default' for the bundled one"),
        DeclareLaunchArgument("hand_model", default_value="standin",
                              description="'standin' or the path of MANO_RIGHT.pkl"),
        DeclareLaunchArgument("backend", default_value="auto",
                              description="auto | eager | torchscript | onnx | tensorrt"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("points_topic", default_value="points",
                              description="segmented object cloud (sensor_msgs/PointCloud2) to subscribe to"),
        DeclareLaunchArgument("use_fake_camera", default_value="false",
                              description="also start fake_depth_camera publishing on points_topic"),
        DeclareLaunchArgument("object", default_value="mug",
                              description="fake camera object: mug | box | bottle | ball | mesh path"),
    ]
    grasp_generator = Node(
        package=PACKAGE,
        executable="grasp_generator",
        name="grasp_generator",
        output="screen",
        parameters=[
            params_file,
            {
                "model": LaunchConfiguration("model"),
                "hand_model": LaunchConfiguration("hand_model"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
            },
        ],
        remappings=[("points", points_topic)],
    )
    fake_camera = Node(
        package=PACKAGE,
        executable="fake_depth_camera",
        name="fake_depth_camera",
        output="screen",
        parameters=[params_file, {"object": LaunchConfiguration("object")}],
        remappings=[("points", points_topic)],
        condition=IfCondition(LaunchConfiguration("use_fake_camera")),
    )
    return LaunchDescription(arguments + [grasp_generator, fake_camera])
